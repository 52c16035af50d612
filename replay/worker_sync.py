"""Back-pressure on the stream workers: events go to the workers' topics, and a wait holds the sender until
every user's windows reflect that user's newest event sent.

The replayer waits before it scores a slice, the closed loop before it asks for a page, so no answer
misses an event the log (or the simulated audience) has already produced, and nothing is dropped however
fast events are sent. The workers apply a user's events in event-time order, so the newest event time in
the user's state on the windows changelog (mirrored here) says how far they have got.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

from kafka import KafkaProducer

from stream.mirror import TopicMirror
from stream.state_codec import state_max_ts
from stream.topics import changelog_topic
from stream.wire import encode_event
from xdm.config import Config
from xdm.progress import progress_bar
from xdm.records import Event
from xdm.time_units import HOUR_MS

log = logging.getLogger(__name__)
POLL_S = 0.02


class WorkerSync:
    """Sends events to the workers and waits until each user's windows hold the newest one sent."""

    def __init__(self, cfg: Config, producer: KafkaProducer, name: str) -> None:
        self.kafka = cfg.kafka
        self.producer = producer
        self.mirror = TopicMirror(cfg.kafka, changelog_topic(cfg), state_max_ts, name=name)
        self.pending: dict[str, int] = {}  # user -> newest event time sent that their windows do not show yet

    async def start(self) -> None:
        await self.mirror.start()

    async def stop(self) -> None:
        await self.mirror.stop()

    def send(self, events: Iterable[Event], label: str | None = None) -> None:
        """Produce `events` (in the order given) to the clicks and impressions topics, keyed by user; with
        `label`, a progress bar shows the events sent."""
        k = self.kafka
        for event in progress_bar(events, desc=label, unit="ev", show=label is not None, mininterval=1.0):
            topic = k.clicks_topic if event.kind == "click" else k.impressions_topic
            self.producer.send(topic, key=event.user_id.encode(), value=encode_event(event))
            self.pending[event.user_id] = max(self.pending.get(event.user_id, 0), event.ts_ms)
        self.producer.flush()

    async def wait(self, timeout_s: float, since_ms: int | None = None) -> bool:
        """Wait until every user sent to has windows as new as their newest event sent: True then, False at
        the deadline (the users still behind are logged and no longer waited for). With `since_ms`, a bar
        shows the event time the workers have reached, in hours since then."""
        deadline = time.monotonic() + timeout_s
        first = since_ms or 0
        hours = round((max(self.pending.values(), default=first) - first) / HOUR_MS, 1)
        with progress_bar(total=hours, desc="workers' event time", unit="h", show=since_ms is not None) as bar:
            while True:
                self.pending = {u: t for u, t in self.pending.items() if (self.mirror.get(u) or 0) < t}
                if since_ms is not None:
                    reached = max(self.mirror.values.values(), default=first)
                    bar.n = min(hours, max(0.0, round((reached - first) / HOUR_MS, 1)))
                    bar.refresh()
                if not self.pending:
                    return True
                if time.monotonic() > deadline:
                    log.warning("workers did not catch up within the sync timeout; going on without them",
                                extra={"users_behind": len(self.pending), "timeout_s": timeout_s})
                    self.pending.clear()
                    return False
                await asyncio.sleep(POLL_S)
