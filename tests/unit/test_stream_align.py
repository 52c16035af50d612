"""Event-time alignment of the clicks and impressions topics (stream/align.py)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from stream.align import EventAligner

CLICKS, IMPRESSIONS = "clicks", "impressions"


def aligner(idle_s: float = 1.0, max_hold_s: float = 60.0, max_held: int = 10_000) -> EventAligner:
    return EventAligner((CLICKS, IMPRESSIONS), idle_s=idle_s, max_hold_s=max_hold_s, max_held=max_held)


def lagging(ends: dict[tuple[str, int], int], starts: dict[tuple[str, int], int] | None = None):
    """Offsets as the consumer knows them: a source not named has nothing to read (end 0)."""
    return lambda topic, partition: ((starts or {}).get((topic, partition), 0), ends.get((topic, partition), 0))


caught_up = lagging({})


def unknown(topic: str, partition: int) -> tuple[None, None]:
    return None, None


def test_clicks_ahead_wait_for_the_impressions_that_lag():
    a = aligner()
    for k, ts in enumerate([100, 200, 300]):
        a.add(CLICKS, 0, k, ts, f"c{ts}", now=0.0)
    a.add(IMPRESSIONS, 0, 0, 50, "i50", now=0.0)
    a.add(IMPRESSIONS, 0, 1, 150, "i150", now=0.0)
    ends = {(IMPRESSIONS, 0): 10, (CLICKS, 0): 9}  # the broker holds more of both
    assert a.release(5.0, lagging(ends)) == ["i50", "c100", "i150"]
    assert a.held == 2
    a.add(IMPRESSIONS, 0, 2, 400, "i400", now=5.0)
    assert a.release(5.0, lagging(ends)) == ["c200", "c300"]  # i400 waits: the clicks may still bring older ones
    ends[(CLICKS, 0)] = 3  # the clicks are read to the end and quiet: nothing older can come
    assert a.release(5.0, lagging(ends)) == ["i400"]


def test_a_quiet_caught_up_topic_does_not_hold_the_other_back():
    a = aligner(idle_s=0.2)
    a.add(CLICKS, 0, 0, 100, "c100", now=0.0)
    a.add(IMPRESSIONS, 0, 0, 50, "i50", now=0.0)
    read = lagging({(CLICKS, 0): 1, (IMPRESSIONS, 0): 1})
    assert a.release(0.1, read) == ["i50"]  # impressions arrived 0.1 s ago: they may still come
    assert a.release(0.3, read) == ["c100"]
    assert a.held == 0 and a.forced == 0


def test_a_topic_not_seen_yet_holds_back_while_it_has_records_or_its_end_is_unknown():
    a = aligner(idle_s=0.2, max_hold_s=60)
    a.add(IMPRESSIONS, 3, 0, 10, "i10", now=1.0)
    assert a.release(5.0, unknown) == []  # no fetch answered yet for the clicks: they may hold older events
    clicks_waiting = lagging({(IMPRESSIONS, 3): 1, (CLICKS, 3): 8}, starts={(CLICKS, 3): 5})
    assert a.release(5.0, clicks_waiting) == []  # three clicks after the committed offset, not delivered yet
    clicks_read = lagging({(IMPRESSIONS, 3): 1, (CLICKS, 3): 8}, starts={(CLICKS, 3): 8})
    assert a.release(5.0, clicks_read) == ["i10"]  # the consumer starts at the clicks' end: nothing older can come
    a.add(IMPRESSIONS, 3, 1, 20, "i20", now=5.0)
    assert a.release(70.0, unknown) == ["i20"]  # an end unknown for longer than max_hold does not block forever


def test_partitions_do_not_wait_for_each_other():
    a = aligner(idle_s=10)
    a.add(CLICKS, 0, 0, 100, "c-p0", now=0.0)
    a.add(CLICKS, 1, 0, 100, "c-p1", now=0.0)
    a.add(IMPRESSIONS, 1, 0, 200, "i-p1", now=0.0)
    ends = lagging({(CLICKS, 0): 1, (IMPRESSIONS, 0): 5, (CLICKS, 1): 1, (IMPRESSIONS, 1): 1})
    assert a.release(0.0, ends) == ["c-p1"]  # partition 0 waits for its impressions, partition 1 does not


def test_records_without_time_leave_from_the_head_of_their_queue():
    a = aligner()
    a.add(CLICKS, 0, 0, None, "bad", now=0.0)
    a.add(CLICKS, 0, 1, 100, "c100", now=0.0)
    a.add(IMPRESSIONS, 0, 0, 10, "i10", now=0.0)
    assert a.release(0.0, caught_up) == ["bad", "i10"]


def test_a_source_leaves_in_arrival_order_even_when_times_go_back():
    a = aligner()
    a.add(IMPRESSIONS, 0, 0, 300, "i300", now=0.0)
    a.add(IMPRESSIONS, 0, 1, 100, "i100", now=0.0)  # an older time behind a newer one
    a.add(CLICKS, 0, 0, 200, "c200", now=0.0)
    assert a.release(0.0, caught_up) == ["c200"]  # i100 may not overtake i300 (acks must stay contiguous)
    a.add(CLICKS, 0, 1, 400, "c400", now=0.0)
    assert a.release(0.0, caught_up) == ["i100", "i300"]


def test_old_records_leave_after_max_hold_unless_the_other_topic_lags():
    a = aligner(idle_s=100, max_hold_s=5)
    a.add(CLICKS, 0, 0, 10_000, "far-future", now=0.0)
    a.add(IMPRESSIONS, 0, 0, 10, "i10", now=0.0)
    ends = {(IMPRESSIONS, 0): 5, (CLICKS, 0): 1}
    assert a.release(6.0, lagging(ends)) == ["i10"]
    ends[(IMPRESSIONS, 0)] = 1  # caught up, but it delivered recently: only the hold limit frees the click
    assert a.release(4.0, lagging(ends)) == []
    assert a.release(6.0, lagging(ends)) == ["far-future"]
    assert a.forced == 1


def test_past_max_held_the_oldest_leave():
    a = aligner(max_held=2)
    for k in range(4):
        a.add(CLICKS, 0, k, 100 + k, f"c{k}", now=0.0)
    ends = lagging({(IMPRESSIONS, 0): 9})
    a.add(IMPRESSIONS, 0, 0, 1, "i1", now=0.0)
    assert a.release(0.0, ends) == ["i1", "c0", "c1"]
    assert a.held == 2 and a.forced == 2


def test_abandon_forgets_everything_including_frontiers():
    a = aligner(idle_s=10)
    a.add(CLICKS, 0, 5, 500, "c500", now=0.0)
    a.add(IMPRESSIONS, 0, 5, 100, "i100", now=0.0)
    assert a.release(0.0, caught_up) == ["i100"]
    assert a.abandon() == ["c500"]
    assert a.held == 0
    a.add(IMPRESSIONS, 0, 0, 50, "i50-again", now=1.0)  # reread after the rebalance: an old frontier must not free it
    a.add(CLICKS, 0, 0, 400, "c400", now=1.0)
    assert a.release(1.0, caught_up) == ["i50-again"]


@st.composite
def two_time_ordered_topics(draw):
    times = st.lists(st.integers(0, 1_000), max_size=30).map(sorted)
    return draw(times), draw(times), draw(st.lists(st.integers(1, 3), min_size=1, max_size=40))


@settings(max_examples=200, deadline=None)
@given(two_time_ordered_topics())
def test_while_both_topics_lag_everything_leaves_once_and_in_time_order(data):
    click_times, impression_times, chunks = data
    a = aligner(idle_s=1e9)
    topics = {CLICKS: click_times, IMPRESSIONS: impression_times}
    sent = {CLICKS: 0, IMPRESSIONS: 0}
    ends = lagging({(t, 0): len(times) for t, times in topics.items()})
    out: list[tuple[int, str, int]] = []
    turn = 0
    while any(sent[t] < len(topics[t]) for t in topics):
        topic = (CLICKS, IMPRESSIONS)[turn % 2]
        for _ in range(chunks[turn % len(chunks)]):  # Faust-like: uneven chunks from each topic in turn
            k = sent[topic]
            if k < len(topics[topic]):
                a.add(topic, 0, k, topics[topic][k], (topics[topic][k], topic, k), now=0.0)
                sent[topic] += 1
        out.extend(a.release(0.0, ends))
        turn += 1
    out.extend(a.release(2e9, lagging({(t, 0): len(times) for t, times in topics.items()})))  # all read, quiet
    assert [t for t, _, _ in out] == sorted(click_times + impression_times)
    assert sorted(out) == sorted([(ts, CLICKS, k) for k, ts in enumerate(click_times)]
                                 + [(ts, IMPRESSIONS, k) for k, ts in enumerate(impression_times)])
    assert a.forced == 0 and a.held == 0
