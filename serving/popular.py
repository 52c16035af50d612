"""Popular items for cold-start answers, kept fresh by the click stream itself.

The server follows the clicks topic (every partition, no consumer group) and keeps a time-decayed click
count per item in event time, so a replay of an old log and live traffic rank alike. The ranked list is
recomputed at most once a second; a request only reads it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time

from aiokafka import AIOKafkaConsumer, TopicPartition

from stream.mirror import stop_background
from stream.wire import MalformedEvent, decode_event
from xdm.client_security import kafka_client_kwargs
from xdm.config import Config

log = logging.getLogger(__name__)
RERANK_EVERY_S = 1.0
KEEP = 1000  # ranked items kept for answers


class PopularItems:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.half_life_ms = cfg.serving.popular_half_life_ms
        self._score: dict[str, float] = {}
        self._at: dict[str, int] = {}
        self._now = 0
        self.ranked: list[str] = []
        self._dirty = False
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task | None = None

    def add_click(self, item_id: str, ts_ms: int) -> None:
        """One click at event time ts_ms: decay the item's old score to ts_ms, then add 1."""
        last = self._at.get(item_id)
        score = self._score.get(item_id, 0.0)
        if last is not None:
            score *= _decay(abs(ts_ms - last), self.half_life_ms)
        self._score[item_id] = score + 1.0
        self._at[item_id] = max(ts_ms, last or ts_ms)
        self._now = max(self._now, ts_ms)
        self._dirty = True

    def rerank(self) -> None:
        now, half = self._now, self.half_life_ms
        current = {item: s * _decay(now - self._at[item], half) for item, s in self._score.items()}
        self.ranked = sorted(current, key=lambda item: (-current[item], item))[:KEEP]
        self._dirty = False

    def top(self, k: int, exclude: set[str] = frozenset()) -> list[tuple[str, float]]:
        """The k most popular items not in exclude, with their decayed click counts."""
        out = []
        for item in self.ranked:
            if item not in exclude:
                out.append((item, self._score[item] * _decay(self._now - self._at[item], self.half_life_ms)))
                if len(out) == k:
                    break
        return out

    async def start(self) -> None:
        k = self.cfg.kafka
        self._consumer = AIOKafkaConsumer(**kafka_client_kwargs(k, "aiokafka"), enable_auto_commit=False,
                                          auto_offset_reset="earliest")
        await self._consumer.start()
        parts = self._consumer.partitions_for_topic(k.clicks_topic) or set()
        if not parts:
            await self._consumer._client.force_metadata_update()
            parts = self._consumer.partitions_for_topic(k.clicks_topic) or set()
        partitions = [TopicPartition(k.clicks_topic, p) for p in sorted(parts)]
        self._consumer.assign(partitions)
        await self._consumer.seek_to_beginning(*partitions)
        self._task = asyncio.create_task(self._run(), name="popular-items")

    async def stop(self) -> None:
        await stop_background(self._task, self._consumer)

    async def _run(self) -> None:
        assert self._consumer is not None
        last_rank = 0.0
        while True:
            batches = await self._consumer.getmany(timeout_ms=200, max_records=5000)
            for records in batches.values():
                for record in records:
                    self._consume(record.value)
            if self._dirty and time.monotonic() - last_rank >= RERANK_EVERY_S:
                await asyncio.to_thread(self.rerank) if len(self._score) > 50_000 else self.rerank()
                last_rank = time.monotonic()

    def _consume(self, payload: bytes) -> None:
        try:
            event = decode_event(payload, max_bytes=self.cfg.stream.max_event_bytes, now_ms=int(time.time() * 1000),
                                 max_future_ms=self.cfg.stream.max_future_ms)
        except MalformedEvent:
            return  # the workers dead-letter it; popularity just ignores it
        if event.kind == "click":
            self.add_click(event.item_id, event.ts_ms)


def _decay(age_ms: float, half_life_ms: float) -> float:
    return math.exp(-math.log(2) * age_ms / half_life_ms) if half_life_ms > 0 else 1.0
