"""True end offsets of a topic's partitions, for a broker that may under-report them.

The embedded broker (tansu) can answer ListOffsets, and the highwater of a fetch, with the first offset
of the last record batch + 1 instead of the true end (../shared/STACK.md). `probe_true_ends` reads each
partition from just before the reported end until a fetch comes back empty and takes the larger of the
reported end and the last offset read + 1. On a real Kafka the fetch at end - 1 returns that one record
and the answer equals the reported end, so the probe is safe there too; it never lowers an end. Faust's
changelog recovery (stream/recovery.py), the worker's event-time aligner (stream/consumer.py) and a
topic mirror's "caught up" (stream/mirror.py) use it. No Faust import: the Recall server loads this.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

import aiokafka
from aiokafka import TopicPartition

from xdm.client_security import kafka_client_kwargs
from xdm.config import KafkaConfig

PROBE_WAIT_MS = 200  # how long one probe fetch waits for data before the partition counts as read to the end
PROBE_BUDGET_S = 10.0  # a partition still growing after this long is left at what was read so far


async def probe_true_ends(consumer: aiokafka.AIOKafkaConsumer, reported: Mapping[Any, int | None],
                          budget_s: float = PROBE_BUDGET_S) -> dict[TopicPartition, int | None]:
    """End offsets that cover every record a fetch returns; `consumer` is unassigned and has no group."""
    ends: dict[TopicPartition, int | None] = {_as_tp(tp): end for tp, end in reported.items()}
    tps = [TopicPartition(tp.topic, tp.partition) for tp, end in ends.items() if end is not None]
    if not tps:
        return ends
    consumer.assign(tps)
    for tp in tps:
        consumer.seek(tp, max(int(ends[_as_tp(tp)] or 0) - 1, 0))
    deadline = time.monotonic() + budget_s
    while time.monotonic() < deadline:
        batches = await consumer.getmany(*tps, timeout_ms=PROBE_WAIT_MS)
        if not any(batches.values()):
            break
        for tp, records in batches.items():
            if records:
                ends[_as_tp(tp)] = true_end(ends[_as_tp(tp)], records[-1].offset)
    return ends


def true_end(reported: int | None, last_offset_read: int) -> int:
    """The end offset once a record at `last_offset_read` has been seen (never below the reported one)."""
    return max(reported or 0, last_offset_read + 1)


def _as_tp(tp: Any) -> TopicPartition:
    # faust's TP and aiokafka's TopicPartition are both (topic, partition) tuples: equal and same hash
    return TopicPartition(tp.topic, tp.partition)


async def probe_with_own_consumer(kafka: KafkaConfig,
                                  reported: Mapping[Any, int | None]) -> dict[TopicPartition, int | None]:
    """`probe_true_ends` through a short-lived consumer of its own (the caller's keeps its position)."""
    consumer = _probe_consumer(kafka)
    await consumer.start()
    try:
        return await probe_true_ends(consumer, reported)
    finally:
        await consumer.stop()


async def reported_and_true_ends(kafka: KafkaConfig, topic: str) -> dict[int, tuple[int, int]]:
    """Partition -> (end offset the broker reports, true end) of a topic, from a short-lived consumer."""
    consumer = _probe_consumer(kafka)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        reported = {_as_tp(tp): end for tp, end in (await consumer.end_offsets(tps) if tps else {}).items()}
        ends = await probe_true_ends(consumer, reported)
    finally:
        await consumer.stop()
    return {tp.partition: (int(reported[tp] or 0), int(end or 0)) for tp, end in ends.items()}


def _probe_consumer(kafka: KafkaConfig) -> aiokafka.AIOKafkaConsumer:
    # no group, no commits: a probe must not disturb anyone's offsets
    return aiokafka.AIOKafkaConsumer(**kafka_client_kwargs(kafka, "aiokafka"), group_id=None, enable_auto_commit=False,
                                     fetch_max_wait_ms=PROBE_WAIT_MS)
