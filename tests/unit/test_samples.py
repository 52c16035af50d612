"""Sample anchoring, labels, completion and expiry (stream/samples.py)."""

from __future__ import annotations

import random
import zlib
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from stream.samples import Sample, flush, sample_id, step
from stream.state_codec import decode_state, encode_state
from stream.windows import Outcome, UserState, apply_event, snapshot
from xdm.records import Event, Item
from xdm.stream_rules import SampleRules, WindowRules
from xdm.time_units import DAY_MS

MIN = 60_000
T0 = 1_700_000_000_000
W, S = WindowRules(), SampleRules()


def item(name: str) -> Item:
    return Item(name, "leaf", "top", "brand", f"shop-{name}")


def ev(event_id: str, ts: int, name: str, kind: str = "click", user: str = "u1") -> Event:
    return Event(event_id, ts, user, name, kind)


def feed(events: list[Event], wrules: WindowRules = W, srules: SampleRules = S,
         state: UserState | None = None) -> tuple[UserState, list[Sample]]:
    state = state if state is not None else UserState()
    out: list[Sample] = []
    for e in events:
        out += step(state, e, item(e.item_id), wrules, srules).samples
    return state, out


def clicks(n: int, start: int = T0, every: int = MIN) -> list[Event]:
    return [ev(f"c{k}", start + k * every, f"i{k}") for k in range(n)]


def label_names(sample: Sample) -> list[str]:
    return [b.item.item_id for b in sample.labels]


def test_labels_are_exactly_the_next_five_clicks():
    state, done = feed(clicks(10))
    samples = done + flush(state, W, S)
    assert [s.ts_ms for s in samples] == [T0 + k * MIN for k in range(5)]  # c5..c9 never get five labels
    first = samples[0]
    assert label_names(first) == ["i1", "i2", "i3", "i4", "i5"]
    assert [b.ts_ms for b in first.labels] == [T0 + k * MIN for k in range(1, 6)]
    assert [b.item.item_id for b in first.windows.short] == ["i0"]  # the anchor ends its own session
    assert label_names(samples[4]) == ["i5", "i6", "i7", "i8", "i9"]
    assert samples[4].sample_id == sample_id("u1", "c4") and samples[4].user_id == "u1"
    assert state.pending == []


def test_impressions_are_not_labels_and_windows_stop_at_the_anchor():
    events = [ev("s1", T0 - 2, "x", "impression"), ev("s2", T0 - 1, "x", "impression"), ev("c0", T0, "a")]
    events += [ev(f"s{k}", T0 + k, "y", "impression") for k in range(3, 6)]
    events += [ev(f"c{k}", T0 + 10 * k, f"i{k}") for k in range(1, 6)]
    state, done = feed(events)
    first = (done + flush(state, W, S))[0]
    assert label_names(first) == ["i1", "i2", "i3", "i4", "i5"]
    assert [b.item.item_id for b in first.windows.unclicked] == ["x"]  # y was shown after t
    assert first.windows == snapshot_at(events, T0)


def unpruned(events: list[Event], wrules: WindowRules) -> UserState:
    """A state holding every event: never pruned, so a snapshot at any past time is exact."""
    state = UserState()
    for e in events:
        apply_event(state, e, item(e.item_id), replace(wrules, prune_every_ms=10**15))
    return state


def snapshot_at(events: list[Event], at_ms: int):
    return snapshot(unpruned(events, W), at_ms, W)


def test_a_sample_waits_until_the_watermark_passes_its_last_label():
    state, done = feed(clicks(6))
    assert done == []  # the fifth label (c5) is not yet behind the watermark
    last = T0 + 5 * MIN
    assert step(state, ev("s", last + W.lateness_ms, "z", "impression"), item("z"), W, S).samples == []
    result = step(state, ev("s2", last + W.lateness_ms + 1, "z", "impression"), item("z"), W, S)
    assert [s.sample_id for s in result.samples] == [sample_id("u1", "c0")]


def test_a_late_click_within_lateness_lands_among_the_labels():
    events = clicks(8)
    late = ev("late", T0 + 2 * MIN + 1, "late")
    arrived = events[:4] + [late] + events[4:]  # arrives after c3, 59 s behind it
    assert arrived.index(late) == 4
    state, in_time = feed(sorted(events + [late], key=lambda e: e.ts_ms))
    in_time += flush(state, W, S)
    state, out_of_order = feed(arrived)
    assert out_of_order + flush(state, W, S) == in_time
    assert label_names(in_time[0]) == ["i1", "i2", "late", "i3", "i4"]


def test_labels_must_arrive_within_the_expiry():
    srules = SampleRules(expire_ms=10 * MIN)
    events = [ev("c0", T0, "a")] + [ev(f"c{k}", T0 + k * MIN, f"i{k}") for k in range(1, 5)]
    events.append(ev("c5", T0 + 10 * MIN + 1, "i5"))  # c0's fifth label comes 1 ms too late
    events.append(ev("c6", T0 + 11 * MIN, "i6"))  # c1's fifth label, just in time
    state, done = feed(events, srules=srules)
    assert done == [] and ("c0" in {a[1] for a in state.pending})
    feed([ev("s", T0 + 12 * MIN, "z", "impression")], srules=srules, state=state)  # watermark past t + 10 min
    assert "c0" not in {a[1] for a in state.pending}
    assert [s.sample_id for s in flush(state, W, srules)] == [sample_id("u1", "c1")]


def test_flush_drops_what_can_never_complete():
    state, done = feed(clicks(3))
    assert done == [] and flush(state, W, S) == [] and state.pending == []


def test_one_click_in_m_anchors_by_event_id_hash():
    srules = SampleRules(every_m_clicks=3)
    events = clicks(40)
    state, done = feed(events, srules=srules)
    anchored = {s.sample_id for s in done + flush(state, W, srules)}
    expected = {sample_id("u1", e.event_id) for e in events[:35] if zlib.crc32(e.event_id.encode()) % 3 == 0}
    assert anchored == expected and 0 < len(expected) < 35


def test_duplicate_click_adds_no_second_anchor_and_returns_nothing():
    state, _ = feed(clicks(2))
    before = encode_state(state)
    result = step(state, ev("c1", T0 + MIN, "i1"), item("i1"), W, S)
    assert result.outcome is Outcome.DUPLICATE and result.samples == []
    assert encode_state(state) == before


def test_too_late_click_is_not_an_anchor():
    state, _ = feed(clicks(2))
    result = step(state, ev("old", T0 - 1, "i9"), item("i9"), W, S)
    assert result.outcome is Outcome.TOO_LATE and [a[1] for a in state.pending] == ["c0", "c1"]


def test_sample_ids_are_stable_and_distinct_per_user():
    assert sample_id("u1", "c0") == sample_id("u1", "c0")
    assert len({sample_id("u1", "c0"), sample_id("u2", "c0"), sample_id("u1", "c1"), sample_id("u", "1c0")}) == 4


def test_pending_samples_survive_the_codec():
    events = clicks(12)
    _, straight = feed(events)
    state, out = UserState(), []
    for e in events:  # a worker decodes and re-encodes the state around every event
        out += step(state, e, item(e.item_id), W, S).samples
        state = decode_state(encode_state(state))
    assert out == straight


def test_pending_anchors_keep_their_windows_from_pruning():
    # the anchor's long-term week must survive while it waits a day for its labels
    wrules = replace(W, prune_every_ms=1)
    events = [ev("old", T0, "old"), ev("c0", T0 + 7 * DAY_MS, "a")]
    events += [ev(f"c{k}", T0 + 7 * DAY_MS + k * 2 * 3_600_000, f"i{k}") for k in range(1, 6)]
    state, done = feed(events, wrules=wrules)
    first = (done + flush(state, wrules, S))[0]
    assert [b.item.item_id for b in first.windows.long] == ["old"]


def test_with_profile_sorts_fields():
    state, done = feed(clicks(6) + [ev("s", T0 + 10 * MIN, "z", "impression")])
    assert done[0].with_profile((("z", "1"), ("a", "2"))).profile == (("a", "2"), ("z", "1"))


# --- order independence --------------------------------------------------------------------------------

SMALL_W = WindowRules(session_gap_ms=10, session_max=3, long_term_ms=100, long_term_max=4, unclicked_ms=50,
                      unclicked_min_exposures=2, unclicked_max=3, lateness_ms=20, dedup_max=64, prune_every_ms=7)
SMALL_S = SampleRules(every_m_clicks=2, n_labels=3, expire_ms=40)


def random_events(seed: int, n: int, span: int) -> list[Event]:
    rng = random.Random(seed)
    events, ts = [], 0
    for k in range(n):
        ts += rng.choice((0, 1, 2, 3, 5, 8, 13, 30))
        kind = "click" if rng.random() < 0.4 else "impression"
        events.append(ev(f"e{k}", ts, f"i{rng.randrange(span)}", kind))
    return events


def all_samples(events: list[Event], redeliver: random.Random | None = None) -> list[Sample]:
    """Every sample, in id order; with `redeliver`, each event is followed by a redelivery of an earlier one."""
    state, out = UserState(), []
    for k, e in enumerate(events):
        out += step(state, e, item(e.item_id), SMALL_W, SMALL_S).samples
        if redeliver:
            again = events[redeliver.randint(max(k - 5, 0), k)]
            result = step(state, again, item(again.item_id), SMALL_W, SMALL_S)
            assert result.outcome in (Outcome.DUPLICATE, Outcome.TOO_LATE) and result.samples == []
    return sorted(out + flush(state, SMALL_W, SMALL_S), key=lambda s: s.sample_id)


def expected_samples(events: list[Event]) -> list[Sample]:
    """Anchors and labels read literally off the whole log; windows from a never-pruned state."""
    ordered = sorted((e for e in events if e.kind == "click"), key=lambda e: (e.ts_ms, e.item_id))
    full = unpruned(events, SMALL_W)
    out = []
    for anchor in ordered:
        if zlib.crc32(anchor.event_id.encode()) % SMALL_S.every_m_clicks:
            continue
        labels = [c for c in ordered if c.ts_ms > anchor.ts_ms][:SMALL_S.n_labels]
        if len(labels) < SMALL_S.n_labels or labels[-1].ts_ms > anchor.ts_ms + SMALL_S.expire_ms:
            continue
        out.append((sample_id("u1", anchor.event_id), anchor.ts_ms, snapshot(full, anchor.ts_ms, SMALL_W),
                    [(c.ts_ms, c.item_id) for c in labels]))
    return sorted(out)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), n=st.integers(1, 150), span=st.integers(1, 10))
def test_any_order_within_lateness_gives_the_same_samples(seed, n, span):
    events = random_events(seed, n, span)
    rng = random.Random(seed)
    arrived = sorted(events, key=lambda e: e.ts_ms + rng.randint(0, SMALL_W.lateness_ms))
    in_order = all_samples(events)
    assert all_samples(arrived) == in_order
    assert all_samples(arrived, redeliver=rng) == in_order
    got = [(s.sample_id, s.ts_ms, s.windows, [(b.ts_ms, b.item.item_id) for b in s.labels]) for s in in_order]
    assert sorted(got) == expected_samples(events)
