"""The offline time split (learner/data.py): stream-built windows, no test label in training."""

from __future__ import annotations

import hashlib
import json
import pickle
from dataclasses import asdict
from pathlib import Path

import pytest

from learner.data import OfflineData, build_offline_data
from learner.split import DEFAULT_TEST_ANCHOR, TEST_ANCHORS, OfflineDataError, Split
from stream.samples import flush, step
from stream.windows import UserState, snapshot
from xdm.log_format import LogDir, write_events, write_items, write_users
from xdm.records import Event, Item, UserProfile
from xdm.stream_rules import SampleRules, WindowRules
from xdm.time_units import DAY_MS

T0 = 1_700_000_000_000
MIN = 60_000
RULES = WindowRules()
SRULES = SampleRules(n_labels=3, expire_ms=2 * DAY_MS)


def catalogue() -> dict[str, Item]:
    return {f"i{k}": Item(f"i{k}", f"leaf{k % 4}", f"top{k % 2}", f"b{k % 3}", f"s{k % 5}") for k in range(30)}


def make_log(root: Path) -> list[Event]:
    """Three days: u1 and u2 click across the cut, u3 only after it, u4 only before it.

    i99 is not in items.csv; u2 has no profile row.
    """
    events: list[Event] = []

    def add(user: str, item: str, kind: str, ts: int) -> None:
        events.append(Event(f"e{len(events)}", ts, user, item, kind))

    for day in range(3):
        base = T0 + day * DAY_MS
        for k in range(8):
            ts = base + k * 3 * MIN
            add("u1", f"i{(day * 8 + k) % 30}", "impression", ts)
            add("u1", f"i{(day * 8 + k) % 30}", "click", ts + 1000)
            add("u1", "i29", "impression", ts + 2000)  # impressed many times, never clicked: unclicked window
            add("u2", f"i{(day * 5 + k) % 30}", "impression", ts + 500)
            if k % 2 == 0:
                add("u2", f"i{(day * 5 + k) % 30}" if k else "i99", "click", ts + 1500)
        if day == 2:
            add("u3", "i1", "click", base + 30 * MIN)
        else:
            add("u4", "i2", "click", base + 5 * MIN)
    events.sort(key=lambda e: e.ts_ms)
    write_events(root / "events.csv", events)
    write_items(root / "items.csv", [v for k, v in catalogue().items()])
    write_users(root / "users.csv", [UserProfile("u1", (("age", "30"), ("gender", "f"))),
                                     UserProfile("u4", (("age", "50"), ("gender", "m")))])
    return events


@pytest.fixture
def log_dir(tmp_path: Path) -> tuple[Path, list[Event]]:
    events = make_log(tmp_path)
    return tmp_path, events


@pytest.mark.parametrize("anchor", TEST_ANCHORS)
def test_no_test_label_leaks_into_training(log_dir, anchor):
    root, events = log_dir
    data = build_offline_data(Split(root, RULES, SRULES, test_days=1.0, test_anchor=anchor), progress=False)
    assert data.end_ms == events[-1].ts_ms + 1
    assert data.cut_ms == data.end_ms - DAY_MS
    train = list(data.train)
    assert train, "the pre-cut days must give training samples"
    post_cut_clicks = {(e.user_id, e.ts_ms) for e in events if e.kind == "click" and e.ts_ms >= data.cut_ms}
    for sample in train:
        assert all(b.ts_ms < data.cut_ms for b in sample.labels)
        assert all(b.ts_ms < data.cut_ms for w in (sample.windows.short, sample.windows.long,
                                                   sample.windows.unclicked) for b in w)
        assert not {(sample.user_id, b.ts_ms) for b in sample.labels} & post_cut_clicks
    assert data.test
    for sample in data.test:
        assert sample.ts_ms == data.cut_ms if anchor == "cut" else sample.ts_ms >= data.cut_ms
        assert all(b.ts_ms >= data.cut_ms and b.ts_ms >= sample.ts_ms for b in sample.labels)


def test_training_samples_are_the_stream_samples_of_the_pre_cut_events(log_dir):
    root, events = log_dir
    data = build_offline_data(Split(root, RULES, SRULES, test_days=1.0), progress=False)
    items = catalogue()
    states: dict[str, UserState] = {}
    expected = []
    for e in events:
        if e.ts_ms < data.cut_ms:
            state = states.setdefault(e.user_id, UserState())
            expected += step(state, e, items.get(e.item_id, Item(e.item_id)), RULES, SRULES).samples
    for state in states.values():
        expected += flush(state, RULES, SRULES)
    profiles = {"u1": (("age", "30"), ("gender", "f")), "u4": (("age", "50"), ("gender", "m"))}
    expected = [s.with_profile(profiles.get(s.user_id, ())) for s in expected]
    assert sorted(data.train, key=lambda s: s.sample_id) == sorted(expected, key=lambda s: s.sample_id)
    assert data.train.mean_length("unclicked") == pytest.approx(
        sum(len(s.windows.unclicked) for s in expected) / len(expected))
    assert data.train.mean_length("labels") == pytest.approx(sum(len(s.labels) for s in expected) / len(expected))


def test_test_sample_is_the_snapshot_at_the_cut_with_the_next_clicks_as_labels(log_dir):
    root, events = log_dir
    data = build_offline_data(Split(root, RULES, SRULES, test_days=1.0, test_anchor="cut"), progress=False)
    items = catalogue()
    by_user = {s.user_id: s for s in data.test}
    # u3 has no event before the cut (cold start) and u4 no click after it: neither is a test user
    assert set(by_user) == {"u1", "u2"}
    for user_id, sample in by_user.items():
        state = UserState()
        for e in events:
            if e.user_id == user_id and e.ts_ms < data.cut_ms:
                step(state, e, items.get(e.item_id, Item(e.item_id)), RULES, SRULES)
        assert sample.windows == snapshot(state, data.cut_ms - 1, RULES)
        after = [e for e in events if e.user_id == user_id and e.kind == "click" and e.ts_ms >= data.cut_ms]
        assert [(b.ts_ms, b.item.item_id) for b in sample.labels] == [(e.ts_ms, e.item_id) for e in after[:3]]
    assert any(b.item.item_id == "i29" for b in by_user["u1"].windows.unclicked)
    assert by_user["u1"].profile == (("age", "30"), ("gender", "f"))
    assert by_user["u2"].profile == ()


def test_items_missing_from_the_catalogue_become_bare_items(log_dir):
    root, _ = log_dir
    data = build_offline_data(Split(root, RULES, SRULES, test_days=2.0), progress=False)
    behaviours = [b for s in list(data.train) + list(data.test)
                  for w in (s.windows.short, s.windows.long, s.labels) for b in w]
    assert Item("i99") in {b.item for b in behaviours}
    assert Item("i99") in data.items


def test_more_test_days_move_the_cut_back_and_the_cache_returns_the_same_split(log_dir, tmp_path_factory):
    root, _ = log_dir
    one = build_offline_data(Split(root, RULES, SRULES, test_days=1.0), progress=False)
    two = build_offline_data(Split(root, RULES, SRULES, test_days=2.0), progress=False)
    assert two.cut_ms == one.cut_ms - DAY_MS and len(two.train) < len(one.train)
    cache = tmp_path_factory.mktemp("cache")
    first = build_offline_data(Split(root, RULES, SRULES, 1.0, cache_dir=cache), progress=False)
    again = build_offline_data(Split(root, RULES, SRULES, 1.0, cache_dir=cache), progress=False)
    assert len(list(cache.iterdir())) == 1
    assert list(again.train) == list(first.train) == list(one.train)
    assert list(again.test) == list(one.test)


def test_a_log_shorter_than_its_test_period_is_refused_with_a_reason(log_dir):
    root, _ = log_dir
    with pytest.raises(OfflineDataError, match="no training sample"):
        build_offline_data(Split(root, RULES, SRULES, test_days=3.0), progress=False)


def test_a_validation_split_never_reads_the_held_out_days(log_dir, tmp_path_factory):
    root, events = log_dir
    test_split = build_offline_data(Split(root, RULES, SRULES, test_days=1.0), progress=False)
    val = build_offline_data(Split(root, RULES, SRULES, test_days=1.0, holdout_days=1.0), progress=False)
    assert val.end_ms == test_split.cut_ms and val.cut_ms == test_split.cut_ms - DAY_MS
    assert val.summary()["holdout_days"] == 1.0
    held_out = {e.item_id for e in events if e.ts_ms >= test_split.cut_ms}
    behaviours = [b for s in list(val.train) + list(val.test)
                  for w in (s.windows.short, s.windows.long, s.windows.unclicked, s.labels) for b in w]
    assert all(b.ts_ms < val.end_ms for b in behaviours)
    assert all(s.ts_ms < val.end_ms for s in val.test)
    # the validation users are scored on the day before the test period, with clicks of that day only
    day_before = [e for e in events if e.kind == "click" and val.cut_ms <= e.ts_ms < val.end_ms]
    assert {s.user_id for s in val.test} <= {e.user_id for e in day_before}
    assert held_out  # the test period had events, and none of them got in
    cache = tmp_path_factory.mktemp("cache")
    build_offline_data(Split(root, RULES, SRULES, 1.0, cache_dir=cache), progress=False)
    build_offline_data(Split(root, RULES, SRULES, 1.0, cache_dir=cache, holdout_days=1.0), progress=False)
    assert len(list(cache.iterdir())) == 2  # a validation split is never served from the test split's cache


def test_a_negative_holdout_is_refused(log_dir):
    root, _ = log_dir
    with pytest.raises(OfflineDataError, match="holdout_days"):
        build_offline_data(Split(root, RULES, SRULES, test_days=1.0, holdout_days=-1.0), progress=False)


def test_a_first_click_anchor_takes_the_test_windows_at_each_users_first_post_cut_click(log_dir, tmp_path_factory):
    root, events = log_dir
    at_cut = build_offline_data(Split(root, RULES, SRULES, test_days=1.0, test_anchor="cut"), progress=False)
    data = build_offline_data(Split(root, RULES, SRULES, test_days=1.0), progress=False)
    assert DEFAULT_TEST_ANCHOR == "first_click"  # the README's Table 2 protocol
    assert list(data.train) == list(at_cut.train)  # training never sees a post-cut event either way
    assert data.summary()["test_anchor"] == "first_click" and "test_anchor" not in at_cut.summary()
    items = catalogue()
    by_user = {s.user_id: s for s in data.test}
    assert set(by_user) == {"u1", "u2"}  # both click at least twice after the cut; u3 is cold, u4 gone
    for user_id, sample in by_user.items():
        mine = [e for e in events if e.user_id == user_id]
        post_clicks = [e for e in mine if e.kind == "click" and e.ts_ms >= data.cut_ms]
        anchor = post_clicks[0]
        state = UserState()
        for e in mine:  # the stream's state of this user, up to and including the anchor click
            if e.ts_ms <= anchor.ts_ms:
                step(state, e, items.get(e.item_id, Item(e.item_id)), RULES, SRULES)
        assert sample.ts_ms == anchor.ts_ms and sample.windows == snapshot(state, anchor.ts_ms, RULES)
        assert sample.windows.short[-1].item.item_id == anchor.item_id  # the anchor ends the session
        assert [(b.ts_ms, b.item.item_id) for b in sample.labels] == [(e.ts_ms, e.item_id)
                                                                     for e in post_clicks[1:4]]
    cache = tmp_path_factory.mktemp("cache")
    for anchor in ("cut", "first_click", "first_click"):
        build_offline_data(Split(root, RULES, SRULES, 1.0, cache_dir=cache, test_anchor=anchor), progress=False)
    assert len(list(cache.iterdir())) == 2
    with pytest.raises(OfflineDataError, match="test_anchor"):
        build_offline_data(Split(root, RULES, SRULES, 1.0, test_anchor="noon"), progress=False)


def _cache_key_before_split(data_dir: Path, wrules: WindowRules, srules: SampleRules, test_days: float,
                            holdout_days: float, test_anchor: str) -> str:
    """The cache key as build_offline_data computed it before `Split` owned it, kept verbatim as the reference:
    splits cached under those keys (var/offline-cache) must be found again."""
    logdir = LogDir(data_dir)
    files = [logdir.events, logdir.items, logdir.users]
    stamp = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files if p is not None]
    key = json.dumps({"v": 1, "dir": str(data_dir.resolve()), "files": stamp,
                      "windows": asdict(wrules), "samples": asdict(srules), "test_days": test_days,
                      **({"holdout_days": holdout_days} if holdout_days else {}),
                      **({"test_anchor": test_anchor} if test_anchor != "cut" else {})},
                     sort_keys=True)
    return hashlib.blake2b(key.encode(), digest_size=10).hexdigest()


@pytest.mark.parametrize("anchor", TEST_ANCHORS)
@pytest.mark.parametrize("holdout_days", (0.0, 1.0))
def test_a_split_keeps_the_cache_keys_of_the_splits_cached_before_it(log_dir, tmp_path_factory, anchor, holdout_days):
    root, _ = log_dir
    cache = tmp_path_factory.mktemp("cache")
    split = Split(root, RULES, SRULES, 1.0, holdout_days, anchor, cache)
    assert split.cache_key() == _cache_key_before_split(root, RULES, SRULES, 1.0, holdout_days, anchor)
    assert split.cache_path() == cache / f"{split.cache_key()}.pkl"
    assert Split(str(root), RULES, SRULES, 1.0, holdout_days, anchor).cache_path() is None
    assert Split(root, RULES, SRULES, 1.0, holdout_days, anchor, cache_dir="").cache_path() is None
    assert Split(root, RULES, SRULES, 1.0, holdout_days, anchor, cache_dir=None) == split  # the cache is not the split


def test_a_split_cached_before_split_existed_is_read_back_as_the_split_asked_for(log_dir, tmp_path_factory):
    root, _ = log_dir
    cache = tmp_path_factory.mktemp("cache")
    split = Split(root, RULES, SRULES, 1.0, cache_dir=cache)
    fresh = build_offline_data(Split(root, RULES, SRULES, 1.0), progress=False)
    old = object.__new__(OfflineData)  # the layout pickled until now: the settings were fields of the data
    old.__dict__.update(data_dir=str(root), cut_ms=fresh.cut_ms, end_ms=fresh.end_ms, test_days=1.0,
                        train=fresh.train, test=fresh.test, items=fresh.items, stats=fresh.stats, holdout_days=0.0,
                        test_anchor="first_click")
    split.cache_path().write_bytes(pickle.dumps(old))
    again = build_offline_data(split, progress=False)
    assert again.split == split and again.summary() == fresh.summary()
    assert list(again.train) == list(fresh.train) and list(again.test) == list(fresh.test)


def test_the_validation_split_holds_out_the_test_period_and_a_run_names_its_split():
    split = Split("var/world", RULES, SRULES, 2.0, test_anchor="cut", cache_dir="var/cache")
    assert split.validation() == Split("var/world", RULES, SRULES, 2.0, 2.0, "cut")
    run = {"data": {"data_dir": "var/world", "test_days": 2.0}, "window_rules": asdict(RULES),
           "sample_rules": asdict(SRULES)}  # recorded before holdouts and anchors: no holdout, scored at the cut
    assert Split.of_run(run) == split
    assert Split.of_run({**run, "data": {**run["data"], "holdout_days": 2.0, "test_anchor": "first_click"}},
                        data_dir="elsewhere", cache_dir="c") == Split("elsewhere", RULES, SRULES, 2.0, 2.0)
    with pytest.raises(OfflineDataError, match="test_days"):
        Split("var/world", test_days=0)
