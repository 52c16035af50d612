"""Noticing that the broker lost records a reader had already read, and saying so loudly.

The embedded broker (tansu) keeps topics in memory: a restart loses every record, and the topics come
back empty (the next client's metadata request creates them again, with the broker's default partition
count) or not at all. Nothing else notices. Measured here: a consumer whose position lies past the end
of the new log gets no error from tansu, only empty fetches, and stays where it was (so it would also
skip the new log's first records); Faust's recovery check skips a log of one record (highwater 0) and a
log written again past the stored offset; a windows replica goes on serving windows that no longer move.

A reader keeps a `ReadPositions`: the offset after the last record it read in each partition, and the
highest end offset the broker has reported for it. Every second or so it asks the broker for the end
offsets (one ListOffsets request) and the partition's log has started over when

- the partition is no longer in the topic's metadata, or
- its reported end is below the position read and below an end reported before: an end offset never
  goes back on a log that keeps its records. tansu's reported end can lag the true end (STACK.md: the
  first offset of the last batch + 1), so "below the position" alone is no evidence; on the first
  report for a partition, with nothing to compare, the true end is probed (stream/true_ends.py), or
- a record arrives at an offset below the position read.

What it cannot see: a log created again and written past the old end between two checks.

Each loss is logged at ERROR with what it means for that reader, counted in
`xdm_broker_data_loss_total{reader,topic}`, and handed to the reader's listeners (the Recall server turns
NOT_SERVING). The reader then reads the partition's new log from its beginning, so a later loss is
reported again. Nothing else is repaired: what was built from the lost records must be rebuilt.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Callable, Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition
from kafka import KafkaConsumer
from kafka import TopicPartition as KafkaTopicPartition
from kafka.errors import KafkaError
from prometheus_client import Counter

from stream.true_ends import probe_with_own_consumer
from xdm.config import KafkaConfig

log = logging.getLogger(__name__)
LOSSES = Counter("xdm_broker_data_loss", "Partitions in which the broker lost records a reader had read "
                 "(a broker restart on memory storage)", ["reader", "topic"])
CHECK_EVERY_S = 1.0  # end offsets are compared at most this often (one ListOffsets request)
CHECK_TIMEOUT_S = 5.0  # a broker that does not answer a check in this long is down: no evidence either way

Partition = tuple[str, int]  # (topic, partition)


@dataclass(frozen=True)
class DataLoss:
    """One partition whose records up to `position` the broker no longer holds."""

    reader: str
    topic: str
    partition: int
    position: int  # the offset after the last record the reader had read
    now: str  # what the broker shows instead, in words: "ends at offset 0", "is gone", ...
    consequence: str  # what the reader's owner must do about it

    def describe(self) -> str:
        return (f"broker lost data: topic {self.topic} partition {self.partition} {self.now}, below position "
                f"{self.position} that {self.reader} had read; {self.consequence}")


def report(loss: DataLoss) -> None:
    """Log the loss at ERROR and count it (the one place both happen)."""
    LOSSES.labels(loss.reader, loss.topic).inc()
    log.error(loss.describe(), extra={"reader": loss.reader, "topic": loss.topic, "partition": loss.partition})


class ReadPositions:
    """How far one reader has read each partition, judged against what the broker reports (module doc)."""

    def __init__(self, reader: str, consequence: str) -> None:
        self.reader = reader
        self.consequence = consequence
        self.positions: dict[Partition, int] = {}
        self.ends_seen: dict[Partition, int] = {}  # the highest end offset the broker reported
        self.losses = 0  # partitions reported lost since start
        self._listeners: list[Callable[[DataLoss], None]] = []
        self._checked_at = 0.0

    @property
    def lost(self) -> bool:
        return self.losses > 0

    def on_loss(self, listener: Callable[[DataLoss], None]) -> None:
        """Call listener(loss) for every loss reported from now on (on the reader's thread or loop)."""
        self._listeners.append(listener)

    def start_at(self, topic: str, partition: int, position: int) -> None:
        """The reader resumes at `position` (a checkpoint's offset): records before it count as read."""
        self.positions[(topic, partition)] = position

    def read(self, topic: str, partition: int, offset: int) -> None:
        """A record at `offset` was read: a position behind us means the log started over."""
        key = (topic, partition)
        position = self.positions.get(key, 0)
        if offset < position:
            self._lost(key, position, f"gave offset {offset} again")
        self.positions[key] = offset + 1

    def due(self, every_s: float = CHECK_EVERY_S) -> bool:
        """True at most once per every_s: the caller's loop runs a check then."""
        now = time.monotonic()
        if now - self._checked_at < every_s:
            return False
        self._checked_at = now
        return True

    def judge_ends(self, reported: Mapping[Partition, int | None]) -> tuple[list[Partition], dict[Partition, int]]:
        """Judge the broker's reported end offsets (None: the partition is gone) of partitions read.

        Returns the partitions found lost (the reader reads them again from their beginning, where they
        still exist) and those to probe for their true end: a first report below the position read.
        """
        lost: list[Partition] = []
        unsure: dict[Partition, int] = {}
        for key, end in reported.items():
            position, seen = self.positions.get(key, 0), self.ends_seen.get(key)
            if end is None:
                if position > 0:
                    self._lost(key, position, "is gone")
                    lost.append(key)
                continue
            if end < position and seen is None:
                unsure[key] = end
            elif end < position and end < seen:
                self._lost(key, position, f"ends at offset {end} (it had reported {seen})")
                lost.append(key)
                self.ends_seen[key] = end
                continue
            self.ends_seen[key] = max(seen or 0, end)
        return lost, unsure

    def judge_true_ends(self, true_ends: Mapping[Partition, int | None]) -> list[Partition]:
        """Judge probed true ends of the partitions judge_ends was unsure of; returns those found lost."""
        lost = []
        for key, end in true_ends.items():
            position = self.positions.get(key, 0)
            if end is None or end < position:
                self._lost(key, position, "is gone" if end is None else f"ends at offset {end}")
                lost.append(key)
        return lost

    def _lost(self, key: Partition, position: int, now: str) -> None:
        loss = DataLoss(self.reader, key[0], key[1], position, now, self.consequence)
        self.losses += 1
        self.positions[key] = 0  # the reader reads the new log from its beginning
        report(loss)
        for listener in self._listeners:
            listener(loss)


async def check_aiokafka(positions: ReadPositions, consumer: AIOKafkaConsumer, kafka: KafkaConfig) -> None:
    """The check for a reader on aiokafka, at most once per CHECK_EVERY_S and never longer than
    CHECK_TIMEOUT_S; a lost partition that still exists is read again from its beginning."""
    if not positions.due() or not positions.positions:
        return
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            reported: dict[Partition, int | None] = {key: None for key in positions.positions}
            present = [TopicPartition(t, p) for t, p in positions.positions
                       if p in (consumer.partitions_for_topic(t) or set())]
            if present:
                reported.update({(tp.topic, tp.partition): end
                                 for tp, end in (await consumer.end_offsets(present)).items()})
            lost, unsure = positions.judge_ends(reported)
            if unsure:
                probed = await probe_with_own_consumer(kafka, {TopicPartition(*key): end for key, end in unsure.items()})
                lost += positions.judge_true_ends({(tp.topic, tp.partition): end for tp, end in probed.items()})
    except (TimeoutError, KafkaError, OSError) as exc:
        log.warning("could not check the broker for lost data: %r", exc, extra={"reader": positions.reader})
        return
    again = [TopicPartition(*key) for key in lost if reported.get(key) is not None]
    if again:
        await consumer.seek_to_beginning(*again)


def check_kafka_python(positions: ReadPositions, consumer: KafkaConsumer, kafka: KafkaConfig) -> None:
    """The same check for a reader on kafka-python (blocking, bounded by CHECK_TIMEOUT_S per call).

    Partitions the broker no longer knows show up as a failed end-offset request here (kafka-python's
    partition lookup would ask the broker again and wait): no evidence, the next check tries again.
    """
    if not positions.due() or not positions.positions:
        return
    tps = [KafkaTopicPartition(t, p) for t, p in positions.positions]
    try:
        ends = consumer.end_offsets(tps, timeout_ms=int(CHECK_TIMEOUT_S * 1000))
        lost, unsure = positions.judge_ends({(tp.topic, tp.partition): end for tp, end in ends.items()})
        if unsure:
            probe = probe_with_own_consumer(kafka, {TopicPartition(*key): end for key, end in unsure.items()})
            probed = asyncio.run(asyncio.wait_for(probe, CHECK_TIMEOUT_S))
            lost += positions.judge_true_ends({(tp.topic, tp.partition): end for tp, end in probed.items()})
    except (TimeoutError, KafkaError, OSError) as exc:
        log.warning("could not check the broker for lost data: %r", exc, extra={"reader": positions.reader})
        return
    if lost:
        consumer.seek_to_beginning(*[KafkaTopicPartition(*key) for key in lost])
