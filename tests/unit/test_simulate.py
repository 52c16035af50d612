"""The simulator: seeded determinism, Table-1-like windows, and unclicked items that carry signal.

Everything about the log is measured from the files it wrote (through `replay.stats`), never from the
simulator's hidden state, so the tests check what a learner will actually see.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from replay.simulate import FeedConfig, simulate, world_for
from replay.stats import PAPER_TABLE1, LogStats, _Totals, format_stats, log_stats
from replay.world import World, WorldConfig
from stream.samples import Sample
from stream.windows import Behavior, Windows
from xdm.log_format import read_events, read_items, read_users
from xdm.records import Item
from xdm.stream_rules import SampleRules
from xdm.time_units import DAY_MS

# A scaled-down default world: fewer users, same per-user behaviour and catalogue shape.
SMALL = {"users": 50, "items": 5000, "days": 14, "seed": 5}


@pytest.fixture(scope="module")
def small_log(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, LogStats]:
    out = tmp_path_factory.mktemp("sim")
    simulate(out_dir=out, progress=False, **SMALL)
    # every second click anchors a sample (chosen by event-id hash, so averages stay unbiased): half the time
    return out, log_stats(out, srules=SampleRules(every_m_clicks=2))


def _files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


@pytest.mark.parametrize("compress", [False, True])
def test_same_seed_same_bytes(tmp_path: Path, compress: bool) -> None:
    runs = [simulate(20, 300, 3, 7, tmp_path / name, compress=compress, progress=False) for name in ("a", "b")]
    assert runs[0].events > 0
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    simulate(20, 300, 3, 8, tmp_path / "c", compress=compress, progress=False)
    assert _files(tmp_path / "a") != _files(tmp_path / "c")


def test_writes_a_readable_sorted_log(tmp_path: Path) -> None:
    summary = simulate(20, 300, 3, 7, tmp_path, compress=True, progress=False)
    events = list(read_events(tmp_path))  # the reader also checks the time order
    items = read_items(tmp_path)
    assert len(events) == summary.events and sum(e.kind == "click" for e in events) == summary.clicks
    assert {e.item_id for e in events} <= items.keys()
    assert {e.user_id for e in events} <= read_users(tmp_path).keys()
    assert all(e.request_id and e.position >= 0 for e in events)


def test_windows_come_near_the_papers_table1(small_log: tuple[Path, LogStats]) -> None:
    _, stats = small_log
    # a 50-user world is noisy (heavy users dominate the long-term window), hence wide bands
    assert stats.avg_short == pytest.approx(PAPER_TABLE1["avg_short"][0], rel=0.3)
    assert stats.avg_long == pytest.approx(PAPER_TABLE1["avg_long"][0], rel=0.5)
    assert stats.avg_unclicked == pytest.approx(PAPER_TABLE1["avg_unclicked"][0], rel=0.2)
    assert 0.01 < stats.ctr < 0.06
    assert stats.samples > 300 and stats.duplicates == stats.too_late == stats.unknown_items == 0


def test_unclicked_items_point_away_from_the_next_clicks(small_log: tuple[Path, LogStats]) -> None:
    _, stats = small_log
    # the shoes case: what the feed shows without clicks is rarely what the user clicks next ...
    assert stats.label_overlap_unclicked < 0.6 * stats.label_overlap_long
    # ... and subtracting it from the click history (eq. 6, at category level) predicts better than clicks alone
    assert stats.leaf_hit_minus_unclicked > stats.leaf_hit_clicks


def test_stale_exposure_switches_the_mechanism(tmp_path: Path) -> None:
    off = simulate(20, 300, 4, 7, tmp_path / "off", feed=FeedConfig(stale_exposure=0.0), progress=False)
    on = simulate(20, 300, 4, 7, tmp_path / "on", progress=False)
    assert off.stale_impressions == 0 < on.stale_impressions


def test_popularity_is_skewed(small_log: tuple[Path, LogStats]) -> None:
    root, _ = small_log
    shown = Counter(e.item_id for e in read_events(root) if e.kind == "impression")
    counts = np.sort(np.array(list(shown.values())))[::-1]
    top_share = counts[: len(read_items(root)) // 100].sum() / counts.sum()
    assert top_share > 0.05  # the top 1% of the catalogue gets over 5x its uniform share of impressions


def test_stats_table_shows_papers_values_beside_ours(small_log: tuple[Path, LogStats]) -> None:
    table = format_stats(small_log[1])
    assert "71.32" in table and "Taobao" in table and f"{small_log[1].samples:,}" in table


def test_interests_drift_and_faded_ones_lose_their_clicks() -> None:
    world = World(WorldConfig.scaled(200, 1000), days=14, seed=3)
    users = np.arange(200)
    day_0, day_13 = world.cfg.start_ms, world.cfg.start_ms + 13 * DAY_MS
    assert world.faded_mask(users, day_13).sum() > world.faded_mask(users, day_0).sum()
    assert world.active_mask(users, day_13).sum(axis=1).mean() == pytest.approx(4, rel=0.35)
    # an item of a faded interest's leaf is clicked far less often than one of an active interest
    faded_u, faded_k = np.nonzero(world.faded_mask(users, day_13) & ~_revived(world, users, day_13))
    active_u, active_k = np.nonzero(world.active_mask(users, day_13))
    p_faded = world.click_prob_pairs(faded_u, _item_of_leaf(world, world.users.leaf[faded_u, faded_k]), day_13)
    p_active = world.click_prob_pairs(active_u, _item_of_leaf(world, world.users.leaf[active_u, active_k]), day_13)
    assert p_faded.mean() < 0.3 * p_active.mean()


def test_clicking_an_interest_enough_satisfies_it() -> None:
    world = World(WorldConfig.scaled(5, 500), days=3, seed=1)
    ts = world.cfg.start_ms + 3_600_000
    k = int(np.flatnonzero(world.active_mask(np.array([0]), ts)[0])[0])
    item = _item_of_leaf(world, np.array([world.users.leaf[0, k]]))
    before = world.active_mask(np.array([0]), ts)[0].sum()
    for i in range(int(world.clicks_left[0, k])):
        world.observe_clicks(np.array([0]), item, np.array([ts + i]))
    later = ts + 60_000
    assert world.faded_mask(np.array([0]), later)[0, k]
    assert world.active_mask(np.array([0]), later)[0].sum() == before  # a new interest took its place


def test_feed_config_rejects_shares_above_one() -> None:
    with pytest.raises(ValueError, match="shares"):
        FeedConfig(history_share=0.5, stale_exposure=0.4, popular_share=0.3)


def _revived(world: World, users: np.ndarray, ts_ms: int) -> np.ndarray:
    leaf = world.users.leaf[users]
    return ((leaf[:, :, None] == leaf[:, None, :]) & world.active_mask(users, ts_ms)[:, None, :]).any(axis=2)


def _item_of_leaf(world: World, leaves: np.ndarray) -> np.ndarray:
    """The most popular item of each leaf (leaves without items fall back to item 0)."""
    cat = world.catalogue
    best = np.zeros(cat.n_leaves, dtype=np.int64)
    order = np.argsort(cat.item_pop)  # ascending, so the last write per leaf is its most popular item
    best[cat.item_leaf[order]] = order
    return best[leaves]


def test_click_prob_matches_the_click_model_written_out() -> None:
    world = World(WorldConfig.scaled(30, 400), days=5, seed=2)
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 30, 3000), rng.integers(0, 400, 3000)
    ts = world.cfg.start_ms + rng.integers(0, 5, 3000) * DAY_MS
    cfg, cat, u = world.cfg, world.catalogue, world.users
    expected = []
    for user, item, t in zip(users, items, ts):
        weight = world.interest_weights(np.array([user]), t)[0]
        on_leaf = u.leaf[user] == cat.item_leaf[item]
        brand = on_leaf & (u.brand[user] == cat.item_brand[item])
        appeal = (weight * on_leaf * (1 + cfg.brand_boost * brand)).sum()
        tops = np.where(u.leaf[user] >= 0, cat.leaf_top[np.maximum(u.leaf[user], 0)], -1)
        sibling = appeal == 0 and (weight * (tops == cat.item_top[item])).sum() > 0
        p = min(cfg.leaf_ctr * appeal * cat.item_quality[item] + cfg.top_ctr * sibling, 0.95)
        expected.append(1 - (1 - p) * (1 - cfg.random_ctr))
    assert np.allclose(world.click_prob_pairs(users, items, ts), expected)


def test_a_kept_world_goes_on_from_where_the_log_ends(tmp_path: Path) -> None:
    world = world_for(20, 300, 4, 7)
    simulate(20, 300, 4, 7, tmp_path / "kept", world=world, progress=False)
    simulate(20, 300, 4, 7, tmp_path / "fresh", progress=False)
    assert _files(tmp_path / "kept") == _files(tmp_path / "fresh")  # same world, same log
    assert (world.users.end_ms != world_for(20, 300, 4, 7).users.end_ms).any()  # clicks satisfied interests


def test_dislikes_are_off_by_default_and_leave_every_other_draw_alone() -> None:
    off = World(WorldConfig(n_users=200, n_items=800), days=4, seed=5)
    on = World(WorldConfig(n_users=200, n_items=800, dislike_brands=2.0), days=4, seed=5)
    assert off.disliked.shape == (200, 0)
    for name in ("item_leaf", "item_brand", "item_pop", "item_quality"):
        assert np.array_equal(getattr(off.catalogue, name), getattr(on.catalogue, name))
    for name in ("leaf", "brand", "weight", "start_ms", "end_ms", "activity"):
        assert np.array_equal(getattr(off.users, name), getattr(on.users, name))


def test_disliked_brands_come_from_the_users_interest_leaves_and_are_never_preferred() -> None:
    world = World(WorldConfig(n_users=300, n_items=1000, dislike_brands=2.0), days=4, seed=6)
    cat, users = world.catalogue, world.users
    per_user = (world.disliked >= 0).sum(axis=1)
    assert 1.5 < per_user.mean() < 2.1  # Poisson(2), less the few dropped (a preferred brand, an empty leaf)
    for u in range(300):
        leaves = set(users.leaf[u][users.leaf[u] >= 0].tolist())
        shown = {int(b) for b in cat.item_brand[np.isin(cat.item_leaf, list(leaves))]}
        for brand in world.disliked[u][world.disliked[u] >= 0]:
            assert int(brand) in shown and int(brand) not in set(users.brand[u].tolist())


def test_a_disliked_brand_loses_its_interest_clicks_and_nothing_else_changes() -> None:
    cfg = WorldConfig(n_users=300, n_items=1000, dislike_brands=3.0, dislike_depth=0.9)
    on, off = World(cfg, days=4, seed=7), World(WorldConfig(n_users=300, n_items=1000), days=4, seed=7)
    rng = np.random.default_rng(0)
    users = rng.integers(0, 300, 20_000)
    items = rng.integers(0, 1000, 20_000)
    ts = on.cfg.start_ms + DAY_MS
    p_on, p_off = on.click_prob_pairs(users, items, ts), off.click_prob_pairs(users, items, ts)
    brand = on.catalogue.item_brand[items]
    hit = (on.disliked[users] == brand[:, None]).any(axis=1) & (brand >= 0)
    assert hit.sum() > 100
    assert np.array_equal(p_on[~hit], p_off[~hit])
    r = on.cfg.random_ctr  # noise clicks stay: only the interest-driven part is cut
    interest_on, interest_off = 1 - (1 - p_on[hit]) / (1 - r), 1 - (1 - p_off[hit]) / (1 - r)
    assert np.allclose(interest_on, 0.1 * interest_off)
    assert (p_on[hit] >= r - 1e-12).all()


def test_cli_world_settings_change_the_clicks_and_a_bad_one_is_one_line(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from xdm.cli import cli

    def run(*extra: str, out: str):
        return CliRunner().invoke(cli, ["simulate", "--users", "150", "--items", "600", "--days", "3",
                                        "--out", str(tmp_path / out), *extra])

    assert run(out="plain").exit_code == 0
    liked = run("--world", "dislike_brands=3", "--world", "dislike_depth=1", out="dislikes")
    assert liked.exit_code == 0, liked.output
    for name in ("items.csv", "users.csv"):  # the same catalogue and audience
        assert (tmp_path / "plain" / name).read_bytes() == (tmp_path / "dislikes" / name).read_bytes()
    assert (tmp_path / "plain" / "events.csv").read_bytes() != (tmp_path / "dislikes" / "events.csv").read_bytes()
    for bad, message in (("nope=1", "expected FIELD=VALUE"), ("dislike_depth=x", "is not a number"),
                         ("n_users=5", "expected FIELD=VALUE"), ("dislike_brands=-1", "must not be negative"),
                         ("dislike_depth=1.5", "within [0, 1]")):
        result = run("--world", bad, out="bad")
        assert result.exit_code != 0 and message in result.output and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1


def test_world_settings_keep_the_scaled_tree_and_types() -> None:
    cfg = WorldConfig.scaled(100, 2500).with_settings(["dislike_brands=1.5", "n_brands=90"])
    assert (cfg.n_leaf_cats, cfg.n_brands, cfg.dislike_brands) == (100, 90, 1.5)
    assert isinstance(cfg.n_brands, int)


def _behaviors(*items: tuple[str, str]) -> tuple[Behavior, ...]:
    return tuple(Behavior(i, Item(f"i{i}", leaf_cat=leaf, brand=brand)) for i, (leaf, brand) in enumerate(items))


def test_brand_measure_counts_labels_within_the_windows_leaves() -> None:
    totals = _Totals()
    windows = Windows(short=_behaviors(("L1", "a")), long=_behaviors(("L1", "b"), ("L2", "c")),
                      unclicked=_behaviors(("L1", "d"), ("L2", "c")))
    # labels: L1/a is in the history's L1 brands; L1/d in the unclicked's; L2/x in neither; L3 in no window's
    # leaves and a brandless label count nowhere
    labels = _behaviors(("L1", "a"), ("L1", "d"), ("L2", "x"), ("L3", "a"), ("L1", ""))
    totals.add(Sample("s", "u", 0, windows, labels))
    assert (totals.brand_history.of, totals.brand_history.hits) == (3, 1)
    assert (totals.brand_unclicked.of, totals.brand_unclicked.hits) == (3, 1)
    assert totals.brand_history.share == pytest.approx(1 / 3)
