"""Window rules on hand-made event sequences, and against a brute-force reference (stream/windows.py)."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.state_codec import encode_state
from stream.windows import (
    DAY_MS,
    BadEvent,
    Behavior,
    Outcome,
    UserState,
    Windows,
    apply_event,
    snapshot,
    watermark,
)
from xdm.records import Event, Item
from xdm.stream_rules import WindowRules

MIN = 60_000
T0 = 1_700_000_000_000
RULES = WindowRules()


def item(name: str) -> Item:
    return Item(name, f"leaf-{name}", "top", f"brand-{name}", "shop")


class User:
    """Feeds events to one user's state with fresh event ids."""

    def __init__(self, rules: WindowRules = RULES) -> None:
        self.rules, self.state, self.n = rules, UserState(), 0

    def event(self, kind: str, ts: int, name: str, event_id: str | None = None) -> Outcome:
        self.n += 1
        event = Event(event_id or f"e{self.n}", ts, "u1", name, kind)
        return apply_event(self.state, event, item(name), self.rules)

    def click(self, ts: int, name: str, event_id: str | None = None) -> Outcome:
        return self.event("click", ts, name, event_id)

    def show(self, ts: int, name: str, event_id: str | None = None) -> Outcome:
        return self.event("impression", ts, name, event_id)

    def windows(self, at_ms: int) -> Windows:
        return snapshot(self.state, at_ms, self.rules)


def names(behaviors: tuple[Behavior, ...]) -> list[str]:
    return [b.item.item_id for b in behaviors]


# --- short-term session ------------------------------------------------------------------------------

def test_session_splits_on_a_gap_longer_than_ten_minutes():
    u = User()
    for ts, name in [(0, "a"), (5 * MIN, "b"), (15 * MIN, "c"), (25 * MIN + 1, "d"), (26 * MIN, "e")]:
        u.click(T0 + ts, name)
    assert names(u.windows(T0 + 15 * MIN).short) == ["a", "b", "c"]  # a gap of exactly 10 min stays
    w = u.windows(T0 + 30 * MIN)
    assert names(w.short) == ["d", "e"]
    assert names(w.long) == ["a", "b", "c"]


def test_session_splits_when_it_would_exceed_fifty_clicks():
    u = User()
    for k in range(120):
        u.click(T0 + k * MIN, f"i{k}")
    assert names(u.windows(T0 + 49 * MIN).short) == [f"i{k}" for k in range(50)]
    assert names(u.windows(T0 + 50 * MIN).short) == ["i50"]
    w = u.windows(T0 + 119 * MIN)
    assert names(w.short) == [f"i{k}" for k in range(100, 120)]
    assert names(w.long) == [f"i{k}" for k in range(100)]


def test_latest_session_is_short_term_even_long_after_it_ended():
    u = User()
    u.click(T0, "a")
    assert names(u.windows(T0 + 2 * DAY_MS).short) == ["a"]


def test_windows_are_oldest_first_and_carry_side_info():
    u = User()
    u.click(T0 + 2, "b")
    u.click(T0 + 1, "a")
    assert u.windows(T0 + 3).short == (Behavior(T0 + 1, item("a")), Behavior(T0 + 2, item("b")))


# --- long-term --------------------------------------------------------------------------------------

def test_long_term_seven_day_edge():
    u = User()
    start = T0 + 8 * DAY_MS
    u.click(start - 7 * DAY_MS - 1, "outside")
    u.click(start - 7 * DAY_MS, "inside")
    u.click(start, "session")
    w = u.windows(start)
    assert names(w.long) == ["inside"]
    assert names(w.short) == ["session"]


def test_long_term_keeps_the_newest_hundred():
    u = User()
    for k in range(150):
        u.click(T0 + k * 11 * MIN, f"i{k}")  # 11-minute gaps: every click is its own session
    assert names(u.windows(T0 + 149 * 11 * MIN).long) == [f"i{k}" for k in range(49, 149)]


# --- unclicked --------------------------------------------------------------------------------------

def test_unclicked_three_day_edge():
    u = User()
    t = T0 + 4 * DAY_MS
    u.show(t - 3 * DAY_MS - 1, "outside")
    u.show(t - 3 * DAY_MS, "inside")
    u.show(t, "inside")
    u.show(t, "outside")
    assert names(u.windows(t).unclicked) == ["inside"]


def test_unclicked_needs_more_than_one_exposure_and_carries_the_latest():
    u = User()
    u.show(T0, "once")
    u.show(T0 + 1, "twice")
    u.show(T0 + 5, "twice")
    w = u.windows(T0 + 10)
    assert w.unclicked == (Behavior(T0 + 5, item("twice")),)
    assert u.windows(T0 + 4).unclicked == ()  # the second exposure is later than the snapshot


def test_a_click_within_three_days_removes_an_item_from_unclicked():
    u = User()
    for ts in (1, 2):
        u.show(T0 + ts, "later-click")
        u.show(T0 + ts, "earlier-click")
    u.click(T0 + 10, "later-click")
    u.click(T0, "earlier-click")
    u.click(T0 + 1, "old-click")
    assert names(u.windows(T0 + 5).unclicked) == ["later-click"]  # its click after t does not count yet
    assert names(u.windows(T0 + 10).unclicked) == []
    for ts in (1, 2):
        u.show(T0 + 3 * DAY_MS + ts, "old-click")
        u.show(T0 + 3 * DAY_MS + ts, "kept")
    # old-click's click is now more than three days back; ties in time are ordered by item
    assert names(u.windows(T0 + 3 * DAY_MS + 5).unclicked) == ["kept", "old-click"]


def test_unclicked_keeps_the_hundred_latest_oldest_first():
    u = User()
    for k in range(150):
        u.show(T0 + k, f"i{k}")
        u.show(T0 + 1000 + k, f"i{k}")
    w = u.windows(T0 + 2000)
    assert names(w.unclicked) == [f"i{k}" for k in range(50, 150)]
    assert [b.ts_ms for b in w.unclicked] == [T0 + 1000 + k for k in range(50, 150)]


def test_unknown_item_keeps_its_unknown_side_info():
    u = User()
    apply_event(u.state, Event("x", T0, "u1", "new", "click"), Item("new"), RULES)
    assert u.windows(T0).short == (Behavior(T0, Item("new")),)


# --- delivery: lateness, duplicates, bad input --------------------------------------------------------

def test_event_behind_the_watermark_is_dropped_and_changes_nothing():
    u = User()
    u.click(T0 + 10 * MIN, "a")
    assert watermark(u.state, RULES) == T0 + 9 * MIN
    before = encode_state(u.state)
    assert u.show(T0 + 9 * MIN - 1, "late") is Outcome.TOO_LATE
    assert encode_state(u.state) == before
    assert u.show(T0 + 9 * MIN, "on-time") is Outcome.APPLIED


def test_duplicate_event_id_changes_nothing():
    u = User()
    u.show(T0, "a", event_id="x")
    u.click(T0 + 1, "b", event_id="y")
    before = encode_state(u.state)
    assert u.click(T0 + 1, "b", event_id="y") is Outcome.DUPLICATE
    assert u.show(T0 + 5, "other", event_id="x") is Outcome.DUPLICATE
    assert encode_state(u.state) == before


def test_redelivery_at_the_watermark_is_a_duplicate():
    u = User()
    u.click(T0, "a", event_id="x")
    u.click(T0 + MIN, "b")  # watermark is now exactly T0
    before = encode_state(u.state)
    assert u.click(T0, "a", event_id="x") is Outcome.DUPLICATE
    assert encode_state(u.state) == before


def test_redelivery_older_than_the_lateness_is_refused_as_too_late():
    u = User()
    u.click(T0, "a", event_id="x")
    u.click(T0 + 2 * MIN, "b")
    assert "x" not in u.state.seen  # forgotten: it could only come back too late
    before = encode_state(u.state)
    assert u.click(T0, "a", event_id="x") is Outcome.TOO_LATE
    assert encode_state(u.state) == before


def test_remembered_ids_are_capped():
    u = User(replace(RULES, dedup_max=3))
    for k in range(5):
        u.show(T0 + k, "a", event_id=f"x{k}")
    assert list(u.state.seen) == ["x2", "x3", "x4"]


@pytest.mark.parametrize("change", [
    {"kind": "view"},
    {"user_id": "someone-else"},
    {"item_id": "not-the-item"},
])
def test_bad_events_raise_and_change_nothing(change):
    u = User()
    u.click(T0, "a")
    before = encode_state(u.state)
    event = replace(Event("z", T0, "u1", "a", "click"), **change)
    with pytest.raises(BadEvent):
        apply_event(u.state, event, item("a"), RULES)
    assert encode_state(u.state) == before


def test_item_with_the_field_separator_is_refused():
    with pytest.raises(BadEvent, match="U\\+001F"):
        apply_event(UserState(), Event("z", T0, "u1", "a", "click"), Item("a", "x\x1fy"), RULES)


def test_rules_reject_nonsense():
    with pytest.raises(ValueError, match="session_max"):
        WindowRules(session_max=0)
    with pytest.raises(ValueError, match="lateness_ms"):
        WindowRules(lateness_ms=-1)


# --- pruning ------------------------------------------------------------------------------------------

def test_state_keeps_only_what_later_snapshots_need():
    u = User()
    for day in range(30):
        for k in range(3):
            u.click(T0 + day * DAY_MS + k * MIN, f"c{day}-{k}")
            u.show(T0 + day * DAY_MS + k * MIN, f"s{day}")
    now = T0 + 29 * DAY_MS + 2 * MIN
    w = u.windows(now)
    assert names(w.short) == ["c29-0", "c29-1", "c29-2"]
    assert names(w.long) == [f"c{d}-{k}" for d in range(22, 29) for k in range(3)]
    assert names(w.unclicked) == ["s27", "s28", "s29"]  # s26 has one exposure left in the three days
    # kept: the long-term week before the session the watermark fell in, and three days of impressions
    assert len(u.state.clicks) == 9 * 3 and len(u.state.impressions) == 4 * 3


# --- order independence and the brute-force reference ------------------------------------------------

SMALL = WindowRules(session_gap_ms=10, session_max=3, long_term_ms=100, long_term_max=4, unclicked_ms=50,
                    unclicked_min_exposures=2, unclicked_max=3, lateness_ms=20, dedup_max=64, prune_every_ms=7)


def reference(events: list[Event], at_ms: int, rules: WindowRules) -> Windows:
    """The rules read literally, from every event ever seen, with no state or pruning."""
    clicks = sorted((e.ts_ms, e.item_id) for e in events if e.kind == "click" and e.ts_ms <= at_ms)
    shows = [(e.ts_ms, e.item_id) for e in events if e.kind == "impression" and e.ts_ms <= at_ms]
    starts, count = [], 0
    for i, (ts, _) in enumerate(clicks):
        if i == 0 or ts - clicks[i - 1][0] > rules.session_gap_ms or count == rules.session_max:
            starts.append(i)
            count = 0
        count += 1
    start = starts[-1] if starts else 0
    long = [c for c in clicks[:start] if c[0] >= clicks[start][0] - rules.long_term_ms] if clicks else []
    long = long[max(len(long) - rules.long_term_max, 0):]
    since = at_ms - rules.unclicked_ms
    clicked = {name for ts, name in clicks if ts >= since}
    recent = [s for s in shows if s[0] >= since and s[1] not in clicked]
    unclicked = sorted(max(s for s in recent if s[1] == name) for name in {name for _, name in recent}
                       if sum(1 for s in recent if s[1] == name) >= rules.unclicked_min_exposures)
    unclicked = unclicked[max(len(unclicked) - rules.unclicked_max, 0):]

    def as_behaviors(rows):
        return tuple(Behavior(ts, item(name)) for ts, name in rows)
    return Windows(as_behaviors(clicks[start:]), as_behaviors(long), as_behaviors(unclicked))


def random_events(seed: int, n: int, span: int) -> list[Event]:
    rng = random.Random(seed)
    events, ts = [], 0
    for k in range(n):
        ts += rng.choice((0, 1, 2, 3, 5, 8, 13))
        kind = "click" if rng.random() < 0.35 else "impression"
        events.append(Event(f"e{k}", ts, "u1", f"i{rng.randrange(span)}", kind))
    return events


def arrive_within_lateness(events: list[Event], seed: int, lateness: int) -> list[Event]:
    """Shuffle so that each event trails the newest one before it by at most `lateness`."""
    rng = random.Random(seed)
    return sorted(events, key=lambda e: e.ts_ms + rng.randint(0, lateness))


def run(events: list[Event], rules: WindowRules) -> UserState:
    state = UserState()
    for e in events:
        assert apply_event(state, e, item(e.item_id), rules) is Outcome.APPLIED
    return state


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), n=st.integers(1, 120), span=st.integers(1, 12))
def test_any_order_within_lateness_gives_the_reference_windows(seed, n, span):
    events = random_events(seed, n, span)
    in_order = run(events, SMALL)
    shuffled = run(arrive_within_lateness(events, seed, SMALL.lateness_ms), SMALL)
    mark = watermark(in_order, SMALL)
    assert mark == watermark(shuffled, SMALL)
    for at in range(mark, in_order.max_ts + 3):
        expected = reference(events, at, SMALL)
        assert snapshot(in_order, at, SMALL) == expected
        assert snapshot(shuffled, at, SMALL) == expected


def test_reference_agrees_on_a_long_run_with_pruning():
    events = random_events(7, 3000, 40)
    state = UserState()
    for k, e in enumerate(events):
        apply_event(state, e, item(e.item_id), SMALL)
        if k % 97 == 0:
            assert snapshot(state, e.ts_ms, SMALL) == reference(events[:k + 1], e.ts_ms, SMALL)
    assert len(state.clicks) + len(state.impressions) < 200  # pruned as it went
