"""Popular items for cold-start answers, kept fresh by the click stream itself.

The server follows the clicks topic (every partition, no consumer group) and keeps a time-decayed click
count per item in event time, so a replay of an old log and live traffic rank alike. The ranked list is
recomputed at most once a second; a request only reads it.

Memory is bounded: at most CANDIDATES + PRUNE_SLACK items are tracked, however many distinct items are
clicked. A score is kept in forward-decay form: the log of the sum over the item's clicks of
2^((ts - t0) / half-life), against one landmark time t0. Every score then ages alike, so the order of two
items only changes when one of them is clicked: pruning needs no clock, and a click that arrives out of
event-time order counts exactly as much as in order. When the set reaches CANDIDATES + PRUNE_SLACK
items, the lowest-scored are dropped back to CANDIDATES.

The approximation: an item dropped and clicked again starts from its new clicks only, so its count can
be short by what it had when dropped, each time below the CANDIDATES-th score (ten times deeper than any
answer reaches). On a skewed click stream the items answers use are far above that line and counted
exactly; an item that climbs from the bottom may be short by the few clicks it had down there.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import time

from aiokafka import AIOKafkaConsumer

from stream.mirror import BAD_RECORDS, stop_background
from stream.partitions import find_partitions
from stream.wire import MalformedEvent, decode_event
from xdm.client_security import kafka_client_kwargs
from xdm.config import Config
from xdm.supervision import SupervisedTask, Supervisor

log = logging.getLogger(__name__)
RERANK_EVERY_S = 1.0
KEEP = 1000  # ranked items kept for answers
CANDIDATES = 10 * KEEP  # items whose scores are tracked
PRUNE_SLACK = KEEP  # new items taken in between two prunes (a prune sorts the set: keep it rare)
READER = "popular"  # xdm_bad_records_total label


class PopularItems:
    def __init__(self, cfg: Config, supervisor: Supervisor | None = None) -> None:
        self.cfg = cfg
        half_life_ms = cfg.serving.popular_half_life_ms
        self._rate = math.log(2) / half_life_ms if half_life_ms > 0 else 0.0  # decay per ms (0: none)
        self._log_score: dict[str, float] = {}  # item -> log sum of exp(rate * (ts - landmark)) over its clicks
        self._landmark: int | None = None  # event time t0 of the forward decay: the first click seen
        self._now = 0
        self.ranked: list[str] = []
        self._dirty = False
        self.supervisor = supervisor or Supervisor()
        self._consumer: AIOKafkaConsumer | None = None
        self._task: SupervisedTask | None = None

    @property
    def tracked(self) -> int:
        """Items whose scores are kept (bounded by CANDIDATES + PRUNE_SLACK)."""
        return len(self._log_score)

    def add_click(self, item_id: str, ts_ms: int) -> None:
        """One click at event time ts_ms."""
        if self._landmark is None:
            self._landmark = ts_ms
        weight = self._rate * (ts_ms - self._landmark)  # log of this click's weight against the landmark
        old = self._log_score.get(item_id)
        if old is None:
            if len(self._log_score) >= CANDIDATES + PRUNE_SLACK:
                self._prune()
            self._log_score[item_id] = weight
        else:
            high, low = (old, weight) if old >= weight else (weight, old)
            self._log_score[item_id] = high + math.log1p(math.exp(low - high))
        self._now = max(self._now, ts_ms)
        self._dirty = True

    def rerank(self) -> None:
        scores = self._log_score
        self.ranked = heapq.nsmallest(KEEP, scores, key=lambda item: (-scores[item], item))
        self._dirty = False

    def top(self, k: int, exclude: set[str] = frozenset()) -> list[tuple[str, float]]:
        """The k most popular items not in exclude, with their decayed click counts."""
        out = []
        for item in self.ranked:
            if item not in exclude:
                out.append((item, self.score(item)))
                if len(out) == k:
                    break
        return out

    def score(self, item_id: str) -> float:
        """The item's click count decayed to the newest event time seen (0 for an untracked item)."""
        log_score = self._log_score.get(item_id)
        if log_score is None or self._landmark is None:
            return 0.0
        return math.exp(log_score - self._rate * (self._now - self._landmark))

    def _prune(self) -> None:
        scores = self._log_score
        kept = heapq.nlargest(CANDIDATES, scores, key=scores.__getitem__)
        self._log_score = {item: scores[item] for item in kept}

    async def start(self) -> None:
        k = self.cfg.kafka
        self._consumer = AIOKafkaConsumer(**kafka_client_kwargs(k, "aiokafka"), enable_auto_commit=False,
                                          auto_offset_reset="earliest")
        await self._consumer.start()
        partitions = await find_partitions(self._consumer, k.clicks_topic)
        self._consumer.assign(partitions)
        await self._consumer.seek_to_beginning(*partitions)
        self._task = self.supervisor.start("popular-items", self._run)

    async def stop(self) -> None:
        await stop_background(self._task, self._consumer)

    async def _run(self) -> None:
        assert self._consumer is not None and self._task is not None
        last_rank = 0.0
        while True:
            batches = await self._consumer.getmany(timeout_ms=200, max_records=5000)
            for records in batches.values():
                for record in records:
                    self._consume(record.value)
            self._task.progressed()
            if self._dirty and time.monotonic() - last_rank >= RERANK_EVERY_S:
                self.rerank()
                last_rank = time.monotonic()

    def _consume(self, payload: bytes) -> None:
        try:
            event = decode_event(payload, max_bytes=self.cfg.stream.max_event_bytes, now_ms=int(time.time() * 1000),
                                 max_future_ms=self.cfg.stream.max_future_ms)
            if event.kind == "click":
                self.add_click(event.item_id, event.ts_ms)
        except MalformedEvent:  # the workers dead-letter it; popularity counts and skips it
            BAD_RECORDS.labels(READER).inc()
        except Exception:  # one record must not end the loop
            BAD_RECORDS.labels(READER).inc()
            log.exception("click record skipped")
