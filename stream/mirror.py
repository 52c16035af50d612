"""A local, read-only mirror of a keyed topic: key -> latest value, for the catalogue and read replicas.

It reads every partition (or its `share`: a Recall server's shard) from the beginning, without a consumer
group, so any number of processes on any machine can hold one. `caught_up` is declared once the reader
has passed the topic's true end as it was when reading began: the embedded broker can report an end
offset below the true high watermark (STACK.md), so that end is probed by reading past it, never taken
from the report alone. Records written after that point do not hold the mirror back: on a busy changelog
a fetch is never empty, and a mirror that waited for an empty one never became ready.

The reader loop runs under a Supervisor (xdm/supervision.py): a failed fetch restarts it with backoff.
One record that cannot be used (no key, undecodable, refused by `on_update`) is counted in
`xdm_bad_records_total{reader}`, handed to `on_reject` (the worker dead-letters it) and skipped: it
never ends the loop, and it never replaces the key's last good value.

Values live in a dict unless the owner passes another store (stream/mirror_values.py): the catalogue
keeps them in RocksDB, so a worker's memory does not grow with the catalogue.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, Generic, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import Counter

from stream.broker_loss import ReadPositions, check_aiokafka
from stream.mirror_values import MirrorValues
from stream.partitions import PartitionShare, TopicLayoutMismatch, find_partitions
from stream.true_ends import probe_with_own_consumer
from xdm.client_security import kafka_client_kwargs
from xdm.config import KafkaConfig
from xdm.supervision import SupervisedTask, Supervisor

log = logging.getLogger(__name__)
V = TypeVar("V")
BAD_RECORDS = Counter("xdm_bad_records", "Records a background reader skipped: no key, undecodable or refused",
                      ["reader"])


class TopicMirror(Generic[V]):
    """Keeps {key: decode(value)} for one topic; a None value (tombstone) deletes the key."""

    def __init__(self, kafka: KafkaConfig, topic: str, decode: Callable[[bytes], V], name: str = "",
                 read_committed: bool = False, supervisor: Supervisor | None = None,
                 values: MirrorValues[V] | None = None) -> None:
        self.kafka = kafka
        # a topic written in transactions (kafka.exactly_once) must not show records of aborted ones
        self.isolation_level = "read_committed" if read_committed else "read_uncommitted"
        self.topic = topic
        self.decode = decode
        self.name = name or topic
        self.values: MirrorValues[V] = {} if values is None else values
        self.records = 0
        self.bad_records = 0
        self.supervisor = supervisor or Supervisor()
        # a broker that lost records this mirror had read is reported (stream/broker_loss.py)
        self.read_positions = ReadPositions(self.name, "the mirror keeps the values it had read; "
                                            "a fresh reader of the topic would not find them")
        self._caught_up = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._task: SupervisedTask | None = None
        # Called with (key, value) before a record is stored (value None: a tombstone); raising refuses it.
        self.on_update: Callable[[str, V | None], None] | None = None
        # Called with (record, reason) for each record skipped as bad.
        self.on_reject: Callable[[Any, str], Awaitable[None]] | None = None
        # Set before start(): read only these partitions (a Recall server's shard of the changelog); None: all.
        self.share: PartitionShare | None = None

    @property
    def caught_up(self) -> bool:
        return self._caught_up.is_set()

    def get(self, key: str) -> V | None:
        return self.values.get(key)

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(**kafka_client_kwargs(self.kafka, "aiokafka"), enable_auto_commit=False,
                                          auto_offset_reset="earliest", fetch_max_wait_ms=100,
                                          isolation_level=self.isolation_level)
        await self._consumer.start()
        partitions = await find_partitions(self._consumer, self.topic)
        if self.share is not None:
            try:
                picked = self.share.pick(self.topic, [tp.partition for tp in partitions])
            except TopicLayoutMismatch:  # the caller gives up on this mirror: nothing else would close it
                # aiokafka's stop() raises CancelledError for a consumer whose background routine has not
                # run once yet (measured: stop right after start); one turn of the loop lets it start
                await asyncio.sleep(0)
                await self._consumer.stop()
                raise
            partitions = [TopicPartition(self.topic, p) for p in picked]
        self._consumer.assign(partitions)
        await self._consumer.seek_to_beginning(*partitions)
        self._task = self.supervisor.start(f"mirror-{self.name}", lambda: self._run(partitions))

    async def wait_caught_up(self, timeout_s: float = 60.0) -> None:
        """Wait until caught up; the timeout's message names the reader's last failure, if any."""
        task = self._task
        assert task is not None, "start() the mirror first"
        try:
            await asyncio.wait_for(self._caught_up.wait(), timeout_s)
        except TimeoutError:
            failed = f"; its reader failed {task.failures} times, last: {task.last_error!r}" if task.failures else ""
            raise TimeoutError(f"mirror of {self.topic} not caught up after {timeout_s:.0f} s{failed}") from None

    async def stop(self) -> None:
        await stop_background(self._task, self._consumer)

    async def _run(self, partitions: list[TopicPartition]) -> None:
        assert self._consumer is not None and self._task is not None
        consumer, task = self._consumer, self._task
        target = None if self.caught_up else await self._true_ends(partitions)
        while True:
            batches = await consumer.getmany(timeout_ms=200, max_records=5000)
            for records in batches.values():
                for record in records:
                    self.read_positions.read(record.topic, record.partition, record.offset)
                    reason = self._apply(record)
                    if reason and self.on_reject is not None:
                        await self.on_reject(record, reason)
            task.progressed()
            await check_aiokafka(self.read_positions, consumer, self.kafka)
            if target is not None and await self._passed(target):
                target = None
                self._caught_up.set()
                log.info("mirror caught up", extra={"mirror": self.name, "keys": len(self.values)})

    async def _true_ends(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        # The embedded broker's reported end can stop short of its last batch: the probe reads past it
        # (stream/true_ends.py), so the target covers every record written before reading began.
        assert self._consumer is not None
        reported = await self._consumer.end_offsets(partitions)
        ends = await probe_with_own_consumer(self.kafka, reported)
        return {tp: int(ends.get(tp) or 0) for tp in partitions}

    async def _passed(self, target: dict[TopicPartition, int]) -> bool:
        assert self._consumer is not None
        for tp, end in target.items():
            if await self._consumer.position(tp) < end:
                return False
        return True

    def _apply(self, record) -> str:
        """Store one record; returns "" or, for a record skipped as bad, the reason."""
        self.records += 1
        if record.key is None:
            return self._skip(record, "record has no key")
        try:
            key = record.key.decode() if isinstance(record.key, bytes) else str(record.key)
            value = None if record.value is None else self.decode(record.value)
            if self.on_update:
                self.on_update(key, value)
        except Exception as exc:  # a bad row must not stop a replica: it is counted, reported and skipped
            return self._skip(record, str(exc) or type(exc).__name__)
        if value is None:
            self.values.pop(key, None)
        else:
            self.values[key] = value
        return ""

    def _skip(self, record, reason: str) -> str:
        self.bad_records += 1
        BAD_RECORDS.labels(self.name).inc()
        log.warning("bad record skipped: %s", reason, extra={"mirror": self.name, "partition": record.partition,
                                                             "offset": record.offset})
        return reason


async def stop_background(task: SupervisedTask | None, consumer: AIOKafkaConsumer | None) -> None:
    """Stop a supervised reader task and close its consumer (either may be None: never started)."""
    if task:
        await task.stop()
    if consumer:
        await consumer.stop()
