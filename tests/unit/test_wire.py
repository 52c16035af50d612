"""Event parsing: every bad payload is a MalformedEvent with a reason, never another exception."""

import time

import pytest
from hypothesis import given, settings, strategies as st

from stream.samples import Sample
from stream.windows import Behavior, Windows
from stream.wire import MalformedEvent, SampleTimes, decode_event, decode_sample, encode_event, encode_sample
from xdm.records import Event, Item
from xdm.v1 import events_pb2

NOW = int(time.time() * 1000)
LIMITS = dict(max_bytes=4096, now_ms=NOW, max_future_ms=86_400_000)


def _event(**kw):
    base = dict(event_id="e1", ts_ms=NOW - 1000, user_id="u1", item_id="i1", kind="click")
    base.update(kw)
    return Event(**base)


def test_round_trip():
    event = _event(request_id="r9", position=3)
    assert decode_event(encode_event(event), **LIMITS) == event


@pytest.mark.parametrize("payload,reason", [
    (b"", "empty payload"),
    (b"\xff\xff\xff", "not an xdm.v1.Event"),
    (b"x" * 5000, "exceeds 4096"),
])
def test_bad_bytes(payload, reason):
    with pytest.raises(MalformedEvent, match=reason):
        decode_event(payload, **LIMITS)


@pytest.mark.parametrize("field,value,reason", [
    ("event_id", "", "missing event_id"),
    ("user_id", "", "missing user_id"),
    ("item_id", "", "missing item_id"),
    ("ts_ms", 1_700_000_000, "before 2000"),
    ("ts_ms", -5, "before 2000"),
    ("ts_ms", NOW + 10 * 86_400_000, "in the future"),
    ("kind", 9, "unknown event kind"),
    ("kind", 0, "unknown event kind"),
])
def test_bad_fields(field, value, reason):
    msg = events_pb2.Event(event_id="e", user_id="u", item_id="i", ts_ms=NOW, kind=events_pb2.EVENT_KIND_CLICK)
    setattr(msg, field, value)
    with pytest.raises(MalformedEvent, match=reason):
        decode_event(msg.SerializeToString(), **LIMITS)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_crash(payload):
    try:
        decode_event(payload, **LIMITS)
    except MalformedEvent:
        pass


@settings(max_examples=200, deadline=None)
@given(event_id=st.text(max_size=300), user_id=st.text(max_size=30), item_id=st.text(max_size=30),
       ts=st.integers(min_value=-(2**63), max_value=2**63 - 1), kind=st.integers(min_value=0, max_value=2**31 - 1),
       position=st.integers(min_value=-(2**31), max_value=2**31 - 1))
def test_random_fields_are_validated(event_id, user_id, item_id, ts, kind, position):
    msg = events_pb2.Event(event_id=event_id, user_id=user_id, item_id=item_id, ts_ms=ts, kind=kind, position=position)
    try:
        event = decode_event(msg.SerializeToString(), **LIMITS)
    except MalformedEvent:
        return
    assert event.event_id and event.user_id and event.item_id and event.kind in ("click", "impression")


def test_sample_round_trip():
    item = Item("i1", "leaf", "top", "brand", "shop")
    w = Windows(short=(Behavior(1, item),), long=(), unclicked=(Behavior(2, Item("i2")),))
    sample = Sample("s1", "u1", 5, w, (Behavior(6, item),), (("age", "3"),))
    decoded, times = decode_sample(encode_sample(sample, SampleTimes(source_ms=70, emitted_ms=77)))
    assert decoded == sample and times == SampleTimes(source_ms=70, emitted_ms=77)


def test_version_announcements_round_trip_and_reject_garbage():
    from google.protobuf.message import DecodeError

    from learner.model_store import VersionInfo, decode_announcement, encode_announcement

    info = VersionInfo(arm="xdm", version=7, collection="xdm_xdm_v7", tower_uri="/m/xdm/tower-v000007.pt",
                       published_ms=1_800_000_000_000, trained_samples=129_761, items=5000)
    assert decode_announcement(encode_announcement(info)) == info
    with pytest.raises(DecodeError):
        decode_announcement(b"\xff\xff\xff")
