"""The simulator: seeded determinism, Table-1-like windows, and unclicked items that carry signal.

Everything about the log is measured from the files it wrote (through `replay.stats`), never from the
simulator's hidden state, so the tests check what a learner will actually see.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from replay.format import read_events, read_items, read_users
from replay.simulate import FeedConfig, simulate
from replay.stats import PAPER_TABLE1, LogStats, format_stats, log_stats
from replay.world import World, WorldConfig

# A scaled-down default world: fewer users, same per-user behaviour and catalogue shape.
SMALL = {"users": 100, "items": 5000, "days": 14, "seed": 4}


@pytest.fixture(scope="module")
def small_log(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, LogStats]:
    out = tmp_path_factory.mktemp("sim")
    simulate(out_dir=out, progress=False, **SMALL)
    return out, log_stats(out)


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
    # a 100-user world is noisy (heavy users dominate the long-term window), hence wide bands
    assert stats.avg_short == pytest.approx(PAPER_TABLE1["avg_short"][0], rel=0.3)
    assert stats.avg_long == pytest.approx(PAPER_TABLE1["avg_long"][0], rel=0.5)
    assert stats.avg_unclicked == pytest.approx(PAPER_TABLE1["avg_unclicked"][0], rel=0.2)
    assert 0.01 < stats.ctr < 0.06
    assert stats.samples > 1000 and stats.duplicates == stats.too_late == stats.unknown_items == 0


def test_unclicked_items_point_away_from_the_next_clicks(small_log: tuple[Path, LogStats]) -> None:
    _, stats = small_log
    # the shoes case: what the feed shows without clicks is rarely what the user clicks next ...
    assert stats.label_overlap_unclicked < 0.5 * stats.label_overlap_long
    # ... and it marks which click-history interests are stale, which clicks alone cannot tell
    assert stats.next_click_rate_stale < 0.5 * stats.next_click_rate_other


def test_popularity_is_skewed(small_log: tuple[Path, LogStats]) -> None:
    root, _ = small_log
    shown = Counter(e.item_id for e in read_events(root) if e.kind == "impression")
    counts = np.sort(np.array(list(shown.values())))[::-1]
    top_share = counts[: len(read_items(root)) // 100].sum() / counts.sum()
    assert top_share > 0.15  # the top 1% of the catalogue gets far more than 1% of impressions


def test_stats_table_shows_papers_values_beside_ours(small_log: tuple[Path, LogStats]) -> None:
    table = format_stats(small_log[1])
    assert "71.32" in table and "Taobao" in table and f"{small_log[1].samples:,}" in table


def test_interests_drift_and_faded_ones_lose_their_clicks() -> None:
    world = World(WorldConfig.scaled(200, 1000), days=14, seed=3)
    users = np.arange(200)
    assert world.faded_mask(users, 13).sum() > world.faded_mask(users, 0).sum()
    assert world.active_mask(users, 13).sum(axis=1).mean() == pytest.approx(4, rel=0.35)
    # an item of a faded interest's leaf is clicked far less often than one of an active interest
    day = 13
    faded_u, faded_k = np.nonzero(world.faded_mask(users, day) & ~_revived(world, users, day))
    active_u, active_k = np.nonzero(world.active_mask(users, day))
    ts = world.cfg.start_ms + day * 86_400_000
    p_faded = world.click_prob_pairs(faded_u, _item_of_leaf(world, world.users.leaf[faded_u, faded_k]), ts).mean()
    p_active = world.click_prob_pairs(active_u, _item_of_leaf(world, world.users.leaf[active_u, active_k]), ts).mean()
    assert p_faded < 0.3 * p_active


def test_feed_config_rejects_shares_above_one() -> None:
    with pytest.raises(ValueError, match="shares"):
        FeedConfig(history_share=0.5, stale_exposure=0.4, popular_share=0.3)


def _revived(world: World, users: np.ndarray, day: int) -> np.ndarray:
    leaf = world.users.leaf[users]
    return ((leaf[:, :, None] == leaf[:, None, :]) & world.active_mask(users, day)[:, None, :]).any(axis=2)


def _item_of_leaf(world: World, leaves: np.ndarray) -> np.ndarray:
    """The most popular item of each leaf (leaves without items fall back to item 0)."""
    cat = world.catalogue
    best = np.zeros(cat.n_leaves, dtype=np.int64)
    order = np.argsort(cat.item_pop)  # ascending, so the last write per leaf is its most popular item
    best[cat.item_leaf[order]] = order
    return best[leaves]
