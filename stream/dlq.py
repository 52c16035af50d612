"""Dead letters: a malformed input is set aside with its reason and origin, never dropped silently.

Each letter carries the full reason; the counters (and the Prometheus label) use a short code from a
fixed set, so a flood of distinct messages cannot blow up the metrics' label space.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import faust

from xdm.v1 import events_pb2

log = logging.getLogger(__name__)

# Reason text (as written by stream.wire, stream.batch, stream.mirror and the worker) -> code; first match wins.
REASON_CODES: tuple[tuple[str, str], ...] = (
    ("empty payload", "empty"),
    ("exceeds", "oversized"),
    ("not an xdm.v1.", "not_protobuf"),
    ("missing ", "missing_field"),
    (" without ", "missing_field"),  # an item or profile record without its id
    ("has no key", "no_key"),  # a record of a keyed topic (items, users) without a key
    ("longer than", "id_too_long"),
    ("unknown event kind", "unknown_kind"),
    ("before 2000-01-01", "timestamp_too_old"),
    ("in the future", "timestamp_in_future"),
    ("event on the", "wrong_topic"),
    ("rejected by the window rules", "rejected_by_rules"),
)
OTHER = "other"


def reason_code(reason: str) -> str:
    """The short, bounded category of a dead-letter reason."""
    for needle, code in REASON_CODES:
        if needle in reason:
            return code
    return OTHER


class DeadLetterSink:
    """Sends rejected payloads to the dead-letter topic and counts them by reason code."""

    def __init__(self, topic: faust.TopicT, counters: Any, max_payload_bytes: int) -> None:
        self.topic = topic
        self.counters = counters
        self.max_payload_bytes = max_payload_bytes  # an oversized payload is cut, so the letter itself fits the broker

    async def send(self, event: faust.EventT, reason: str) -> None:
        msg = event.message
        payload = event.value if isinstance(event.value, bytes) else b""
        await self.send_letter(msg.topic, msg.partition, msg.offset, msg.key if isinstance(msg.key, bytes) else None,
                               payload, reason)

    async def send_letter(self, topic: str, partition: int, offset: int, key: bytes | None, payload: bytes | None,
                          reason: str) -> None:
        """Set aside the record at topic/partition/offset with its reason; the letter is keyed by `key`."""
        letter = events_pb2.DeadLetter(
            source_topic=topic, partition=partition, offset=offset, reason=reason,
            payload=(payload or b"")[:self.max_payload_bytes], at_ms=int(time.time() * 1000),
        )
        await self.topic.send(key=key, value=letter.SerializeToString())
        code = reason_code(reason)
        self.counters.dead_letters += 1
        self.counters.dead_letter_reasons[code] = self.counters.dead_letter_reasons.get(code, 0) + 1
        log.warning("dead letter %s: %s (topic %s, partition %d, offset %d)", code, reason, topic, partition, offset)
