"""UserState <-> bytes (stream/state_codec.py): exact round trips, compactness, refusal of bad bytes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.state_codec import (
    FORMAT_VERSION,
    StateFormatError,
    UnsupportedStateVersion,
    decode_state,
    encode_state,
)
from stream.windows import FIELD_SEP, NO_EVENTS, UserState, apply_event
from xdm.records import Event, Item
from xdm.stream_rules import WindowRules

T0 = 1_700_000_000_000


def key(name: str, leaf: str = "leaf") -> str:
    return FIELD_SEP.join((name, leaf, "top", "brand", "shop"))


def assert_round_trip(state: UserState) -> None:
    data = encode_state(state)
    back = decode_state(data)
    assert back == state
    assert list(back.seen.items()) == list(state.seen.items())  # arrival order drives forgetting
    assert encode_state(back) == data


def test_empty_state_round_trips():
    assert_round_trip(UserState())
    assert decode_state(encode_state(UserState())).max_ts == NO_EVENTS


def test_state_built_from_events_round_trips():
    state, rules = UserState(), WindowRules()
    for k in range(30):
        kind = "click" if k % 3 == 0 else "impression"
        name = f"item-{k % 7}"
        apply_event(state, Event(f"e{k}", T0 + k * 1000, "user-é", name, kind), Item(name, "l", "t", "b", "s"), rules)
    state.pending.append((T0, "e0"))
    assert_round_trip(state)


def test_nul_and_non_ascii_strings_round_trip():
    state = UserState("u\x00ser", 5, 6, [(1, key("a\x00b", "叶"))], [(2, key(""))], {"id\x00": 3}, [(1, "\U0001f600")])
    assert_round_trip(state)


def test_repeated_items_are_stored_once():
    state = UserState("u", T0, T0, [], [(T0, key("a"))])
    size = len(encode_state(state))
    state.impressions.append((T0 + 1, key("a")))
    assert len(encode_state(state)) == size + 8 + 2  # one time and one index, no second copy of the item


def test_many_distinct_items_use_wide_indices():
    state = UserState("u", T0, T0, [], [(T0 + k, key(f"i{k}")) for k in range(70_000)])
    assert_round_trip(state)


def test_unknown_format_version_is_refused():
    data = bytearray(encode_state(UserState("u")))
    data[0] = FORMAT_VERSION + 1
    with pytest.raises(UnsupportedStateVersion, match="rebuild"):
        decode_state(bytes(data))


@pytest.mark.parametrize("cut", [0, 1, 10, -1])
def test_truncated_bytes_are_refused(cut):
    data = encode_state(UserState("u", T0, T0, [(T0, key("a"))], [], {"e": T0}, [(T0, "e")]))
    with pytest.raises(StateFormatError):
        decode_state(data[:cut])


def test_trailing_bytes_are_refused():
    with pytest.raises(StateFormatError, match="expected"):
        decode_state(encode_state(UserState("u")) + b"\x00")


def test_times_outside_int64_are_refused():
    with pytest.raises(StateFormatError, match="int64"):
        encode_state(UserState("u", T0, T0, [(2**63, key("a"))]))


texts = st.text(max_size=12)
times = st.integers(-(2**63), 2**63 - 1)
item_keys = st.builds(lambda *f: FIELD_SEP.join(f), texts.filter(lambda s: FIELD_SEP not in s),
                      *[st.sampled_from(["", "c1", "c2", "brand é"])] * 4)
rows = st.lists(st.tuples(times, item_keys), max_size=30)
states = st.builds(UserState, texts, times, times, rows, rows, st.dictionaries(texts, times, max_size=10),
                   st.lists(st.tuples(times, texts), max_size=10))


@settings(max_examples=200, deadline=None)
@given(states)
def test_any_state_round_trips(state):
    assert_round_trip(state)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_decode_or_raise_a_format_error(data):
    try:
        decode_state(data)
    except StateFormatError:
        pass
