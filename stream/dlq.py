"""Dead letters: a malformed input is set aside with its reason and origin, never dropped silently."""

from __future__ import annotations

import logging
import time

import faust

from xdm.v1 import events_pb2

log = logging.getLogger(__name__)


class DeadLetterSink:
    """Sends rejected payloads to the dead-letter topic and counts them by reason."""

    def __init__(self, topic: faust.TopicT, counters) -> None:
        self.topic = topic
        self.counters = counters

    async def send(self, event: faust.EventT, reason: str) -> None:
        msg = event.message
        payload = event.value if isinstance(event.value, bytes) else b""
        letter = events_pb2.DeadLetter(
            source_topic=msg.topic, partition=msg.partition, offset=msg.offset, reason=reason,
            payload=payload, at_ms=int(time.time() * 1000),
        )
        await self.topic.send(key=msg.key if isinstance(msg.key, bytes) else None, value=letter.SerializeToString())
        self.counters.dead_letters += 1
        kind = reason.split(":")[0][:60]
        self.counters.dead_letter_reasons[kind] = self.counters.dead_letter_reasons.get(kind, 0) + 1
        log.warning("dead letter", extra={"topic": msg.topic, "offset": msg.offset, "reason": reason})
