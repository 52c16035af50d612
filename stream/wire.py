"""Bytes on the topics <-> plain records, with validation that names what is wrong.

Everything a worker consumes passes through here; a payload that fails raises MalformedEvent with a
reason, and the agent sends it to the dead-letter topic instead of stopping.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import DecodeError

from stream.samples import Sample
from stream.windows import Behavior, Windows
from xdm.records import Event, Item, UserProfile
from xdm.v1 import events_pb2

MIN_TS_MS = 946_684_800_000  # 2000-01-01: older stamps are taken as a unit or clock error
_KINDS = {events_pb2.EVENT_KIND_IMPRESSION: "impression", events_pb2.EVENT_KIND_CLICK: "click"}
_KIND_CODES = {v: k for k, v in _KINDS.items()}
MAX_ID_LEN = 256


class MalformedEvent(ValueError):
    """A payload that cannot become a valid record; str() is the dead-letter reason."""


def encode_event(event: Event) -> bytes:
    return events_pb2.Event(
        event_id=event.event_id, user_id=event.user_id, item_id=event.item_id, ts_ms=event.ts_ms,
        request_id=event.request_id, position=event.position, kind=_KIND_CODES[event.kind],
    ).SerializeToString()


def decode_event(payload: bytes, *, max_bytes: int, now_ms: int, max_future_ms: int) -> Event:
    """Parse and validate one event; raise MalformedEvent with the reason."""
    if payload is None or len(payload) == 0:
        raise MalformedEvent("empty payload")
    if len(payload) > max_bytes:
        raise MalformedEvent(f"payload of {len(payload)} bytes exceeds {max_bytes}")
    msg = _parse(events_pb2.Event(), payload)
    for name in ("event_id", "user_id", "item_id"):
        value = getattr(msg, name)
        if not value:
            raise MalformedEvent(f"missing {name}")
        if len(value) > MAX_ID_LEN:
            raise MalformedEvent(f"{name} longer than {MAX_ID_LEN} characters")
    if msg.kind not in _KINDS:
        raise MalformedEvent(f"unknown event kind {msg.kind}")
    if msg.ts_ms < MIN_TS_MS:
        raise MalformedEvent(f"timestamp {msg.ts_ms} ms is before 2000-01-01 (seconds instead of ms?)")
    if msg.ts_ms > now_ms + max_future_ms:
        raise MalformedEvent(f"timestamp {msg.ts_ms} ms is more than {max_future_ms} ms in the future")
    return Event(
        event_id=msg.event_id, ts_ms=msg.ts_ms, user_id=msg.user_id, item_id=msg.item_id,
        kind=_KINDS[msg.kind], request_id=msg.request_id, position=msg.position,
    )


def encode_item(item: Item) -> bytes:
    return events_pb2.Item(item_id=item.item_id, leaf_cat=item.leaf_cat, top_cat=item.top_cat,
                           brand=item.brand, shop=item.shop).SerializeToString()


def decode_item(payload: bytes) -> Item:
    msg = _parse(events_pb2.Item(), payload)
    if not msg.item_id:
        raise MalformedEvent("item record without item_id")
    return Item(msg.item_id, msg.leaf_cat, msg.top_cat, msg.brand, msg.shop)


def encode_profile(profile: UserProfile) -> bytes:
    return events_pb2.UserProfile(user_id=profile.user_id, fields=dict(profile.fields)).SerializeToString()


def decode_profile(payload: bytes) -> UserProfile:
    msg = _parse(events_pb2.UserProfile(), payload)
    if not msg.user_id:
        raise MalformedEvent("user profile without user_id")
    return UserProfile(msg.user_id, tuple(sorted(msg.fields.items())))


@dataclass(frozen=True)
class SampleTimes:
    """Wall-clock stamps carried with a sample for the freshness metrics (0 = unknown)."""

    source_ms: int = 0  # broker timestamp of the event that completed the sample
    emitted_ms: int = 0  # when the worker sent the sample


def encode_sample(sample: Sample, times: SampleTimes = SampleTimes()) -> bytes:
    w = sample.windows
    return events_pb2.Sample(
        sample_id=sample.sample_id, user_id=sample.user_id, ts_ms=sample.ts_ms,
        windows=events_pb2.Windows(short_term=_behaviors_pb(w.short), long_term=_behaviors_pb(w.long),
                                   unclicked=_behaviors_pb(w.unclicked)),
        labels=_behaviors_pb(sample.labels), profile=dict(sample.profile), emitted_ms=times.emitted_ms,
        source_ms=times.source_ms,
    ).SerializeToString()


def decode_sample(payload: bytes) -> tuple[Sample, SampleTimes]:
    msg = _parse(events_pb2.Sample(), payload)
    windows = Windows(short=_behaviors(msg.windows.short_term), long=_behaviors(msg.windows.long_term),
                      unclicked=_behaviors(msg.windows.unclicked))
    sample = Sample(sample_id=msg.sample_id, user_id=msg.user_id, ts_ms=msg.ts_ms, windows=windows,
                    labels=_behaviors(msg.labels), profile=tuple(sorted(msg.profile.items())))
    return sample, SampleTimes(source_ms=msg.source_ms, emitted_ms=msg.emitted_ms)


def _behaviors_pb(behaviors) -> list[events_pb2.Behavior]:
    return [
        events_pb2.Behavior(ts_ms=b.ts_ms, item=events_pb2.Item(
            item_id=b.item.item_id, leaf_cat=b.item.leaf_cat, top_cat=b.item.top_cat, brand=b.item.brand,
            shop=b.item.shop))
        for b in behaviors
    ]


def _behaviors(pbs) -> tuple[Behavior, ...]:
    return tuple(
        Behavior(ts_ms=b.ts_ms, item=Item(b.item.item_id, b.item.leaf_cat, b.item.top_cat, b.item.brand, b.item.shop))
        for b in pbs
    )


def _parse(msg, payload: bytes):
    """Fill msg from payload, or raise MalformedEvent naming the expected message type."""
    try:
        msg.ParseFromString(payload)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise MalformedEvent(f"not an {msg.DESCRIPTOR.full_name} protobuf: {exc}") from None
    return msg
