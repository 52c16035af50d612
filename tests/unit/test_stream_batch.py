"""Batch application per user (stream/batch.py) equals applying the events one by one."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from stream.batch import Incoming, StateCache, apply_batch
from stream.samples import step
from stream.state_codec import encode_state
from stream.windows import UserState
from xdm.records import Event, Item
from xdm.stream_rules import SampleRules, WindowRules

T0 = 1_700_000_000_000
W = WindowRules(lateness_ms=10_000)
S = SampleRules(n_labels=2)


def item(name: str) -> Item:
    return Item(name, "leaf", "top", "brand", "shop")


def incoming(event: Event) -> Incoming:
    return Incoming(event.user_id.encode(), event, item(event.item_id), handle=event.event_id)


def states_loader(states: dict[bytes, UserState]):
    def load(key: bytes, handle) -> UserState:
        return states.setdefault(key, UserState())
    return load


events_strategy = st.lists(
    st.tuples(st.sampled_from(["u1", "u2", "u3"]), st.integers(0, 40), st.sampled_from(["click", "impression"]),
              st.sampled_from(["a", "b", "c"]), st.integers(0, 60)),
    max_size=60,
).map(lambda rows: [Event(f"e{eid}", T0 + t * 1000, user, name, kind) for user, t, kind, name, eid in rows])


@settings(max_examples=150, deadline=None)
@given(events_strategy, st.integers(1, 20))
def test_batches_give_the_states_and_samples_of_one_by_one(events, batch_size):
    one_by_one: dict[bytes, UserState] = {}
    expected_samples = []
    for e in events:
        result = step(one_by_one.setdefault(e.user_id.encode(), UserState()), e, item(e.item_id), W, S)
        expected_samples += [s.sample_id for s in result.samples]
    batched: dict[bytes, UserState] = {}
    got_samples = []
    totals = [0, 0, 0]
    for start in range(0, len(events), batch_size):
        result = apply_batch([incoming(e) for e in events[start:start + batch_size]], states_loader(batched), W, S)
        got_samples += [s.sample_id for s, _ in result.samples]
        totals = [totals[0] + result.applied, totals[1] + result.duplicates, totals[2] + result.too_late]
    assert {k: encode_state(v) for k, v in batched.items()} == {k: encode_state(v) for k, v in one_by_one.items()}
    assert sorted(got_samples) == sorted(expected_samples)
    assert sum(totals) == len(events)


def test_a_user_is_loaded_once_per_batch_and_written_with_its_last_event():
    loads = []

    def load(key, handle):
        loads.append((key, handle))
        return UserState()

    batch = [incoming(Event(f"e{k}", T0 + k, "u1" if k % 2 else "u2", "a", "impression")) for k in range(6)]
    result = apply_batch(batch, load, W, S)
    assert loads == [(b"u2", "e0"), (b"u1", "e1")]
    assert [(u.key, u.handle, u.write) for u in result.updates] == [(b"u2", "e4", True), (b"u1", "e5", True)]


def test_a_redelivery_rewrites_the_state_so_a_lost_changelog_record_comes_back():
    states: dict[bytes, UserState] = {}
    e = Event("e1", T0, "u1", "a", "click")
    apply_batch([incoming(e)], states_loader(states), W, S)
    again = apply_batch([incoming(e)], states_loader(states), W, S)
    assert again.duplicates == 1 and again.applied == 0
    assert again.updates[0].write


def test_a_batch_of_only_late_events_writes_nothing():
    states: dict[bytes, UserState] = {}
    apply_batch([incoming(Event("new", T0 + 60_000, "u1", "a", "click"))], states_loader(states), W, S)
    late = apply_batch([incoming(Event("old", T0, "u1", "b", "click"))], states_loader(states), W, S)
    assert late.too_late == 1 and not late.updates[0].write


def test_events_the_rules_refuse_are_reported_and_the_rest_applied():
    bad = Incoming(b"u1", Event("bad", T0, "u1", "x", "click"), Item("x", leaf_cat="has\x1fseparator"), "bad")
    good = incoming(Event("good", T0 + 1, "u1", "a", "click"))
    result = apply_batch([bad, good], states_loader({}), W, S)
    assert [h for h, _ in result.rejected] == ["bad"]
    assert "rejected by the window rules" in result.rejected[0][1]
    assert result.applied == 1


def test_state_cache_keeps_the_most_recent_users():
    cache = StateCache(2)
    a, b, c = UserState("a"), UserState("b"), UserState("c")
    cache.put(b"a", a)
    cache.put(b"b", b)
    assert cache.get(b"a") is a  # a is now the most recent
    cache.put(b"c", c)
    assert cache.get(b"b") is None and cache.get(b"a") is a and len(cache) == 2
    cache.clear()
    assert len(cache) == 0
    StateCache(0).put(b"a", a)  # capacity 0: caching off, no error
