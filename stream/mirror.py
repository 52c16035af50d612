"""A local, read-only mirror of a keyed topic: key -> latest value, for the catalogue and read replicas.

It reads every partition from the beginning, without a consumer group, so any number of processes on any
machine can hold one. `caught_up` is only declared after a fetch at the broker's reported end returns
nothing: the embedded broker can report an end offset below the true high watermark (STACK.md), so the
reported end alone would let a reader start serving with rows missing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable, Generic, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition

from stream.true_ends import probe_with_own_consumer
from xdm.client_security import kafka_client_kwargs
from xdm.config import KafkaConfig

log = logging.getLogger(__name__)
V = TypeVar("V")


class TopicMirror(Generic[V]):
    """Keeps {key: decode(value)} for one topic; a None value (tombstone) deletes the key."""

    def __init__(self, kafka: KafkaConfig, topic: str, decode: Callable[[bytes], V], name: str = "",
                 read_committed: bool = False) -> None:
        self.kafka = kafka
        # a topic written in transactions (kafka.exactly_once) must not show records of aborted ones
        self.isolation_level = "read_committed" if read_committed else "read_uncommitted"
        self.topic = topic
        self.decode = decode
        self.name = name or topic
        self.values: dict[str, V] = {}
        self.last_update_ms: dict[str, int] = {}  # broker timestamp of the latest record per key
        self.records = 0
        self.bad_records = 0
        self._caught_up = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task | None = None
        self.on_update: Callable[[str, V | None], None] | None = None

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
        partitions = await self._partitions()
        self._consumer.assign(partitions)
        await self._consumer.seek_to_beginning(*partitions)
        self._task = asyncio.create_task(self._run(partitions), name=f"mirror-{self.name}")

    async def wait_caught_up(self, timeout_s: float = 60.0) -> None:
        """Wait until caught up; a mirror whose reader task died raises that task's error here."""
        assert self._task is not None, "start() the mirror first"
        waiter = asyncio.create_task(self._caught_up.wait())
        done, _ = await asyncio.wait({waiter, self._task}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        if waiter not in done:
            waiter.cancel()
            if self._task in done:
                self._task.result()
            raise TimeoutError(f"mirror of {self.topic} not caught up after {timeout_s:.0f} s")

    async def stop(self) -> None:
        await stop_background(self._task, self._consumer)

    async def _partitions(self) -> list[TopicPartition]:
        assert self._consumer is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            parts = self._consumer.partitions_for_topic(self.topic)
            if not parts:
                await self._consumer._client.force_metadata_update()
                parts = self._consumer.partitions_for_topic(self.topic)
            if parts:
                return [TopicPartition(self.topic, p) for p in sorted(parts)]
            await asyncio.sleep(0.2)
        raise RuntimeError(f"topic {self.topic} does not exist; create topics first (xdm topics)")

    async def _run(self, partitions: list[TopicPartition]) -> None:
        assert self._consumer is not None
        consumer = self._consumer
        while True:
            batches = await consumer.getmany(timeout_ms=200, max_records=5000)
            for records in batches.values():
                for record in records:
                    self._apply(record)
            if not batches and not self.caught_up and await self._at_true_end(partitions):
                self._caught_up.set()
                log.info("mirror caught up", extra={"mirror": self.name, "keys": len(self.values)})

    async def _at_true_end(self, partitions: list[TopicPartition]) -> bool:
        # An empty fetch alone does not prove the end (a slow fetch on a loaded machine returns nothing
        # too), and the embedded broker's reported end can stop short of its last batch: the probe
        # reads past it (stream/true_ends.py) before the mirror calls itself caught up.
        assert self._consumer is not None
        reported = await self._consumer.end_offsets(partitions)
        positions = {tp: await self._consumer.position(tp) for tp in partitions}
        if any(positions[tp] < reported[tp] for tp in partitions):
            return False
        ends = await probe_with_own_consumer(self.kafka, reported)
        return all(positions[tp] >= (ends.get(tp) or 0) for tp in partitions)

    def _apply(self, record) -> None:
        self.records += 1
        if record.key is None:
            self.bad_records += 1
            return
        key = record.key.decode() if isinstance(record.key, bytes) else str(record.key)
        if record.value is None:
            self.values.pop(key, None)
            value = None
        else:
            try:
                value = self.decode(record.value)
            except Exception:  # a bad row must not stop a replica; it is counted and skipped
                self.bad_records += 1
                log.warning("undecodable record skipped", extra={"mirror": self.name, "key": key})
                return
            self.values[key] = value
        self.last_update_ms[key] = record.timestamp
        if self.on_update:
            self.on_update(key, value)


async def stop_background(task: asyncio.Task | None, consumer: AIOKafkaConsumer | None) -> None:
    """Cancel a background reader task and close its consumer (either may be None: never started)."""
    if task:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
    if consumer:
        await consumer.stop()
