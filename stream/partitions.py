"""A topic's partitions, for a reader that assigns itself partitions instead of joining a consumer group.

Such a reader (a mirror, the popular-items counter, the learner) needs the topic's metadata before it
can assign anything, and may start in the same second that `xdm topics` or a test fixture creates the
topic. aiokafka answers `partitions_for_topic` from its cached metadata only, so a cache older than the
topic is refreshed by hand; kafka-python asks the broker itself when its cache lacks the topic. Either
way the wait has a deadline, and a topic that never appears is an error that says how to create it.
"""

from __future__ import annotations

import asyncio
import time

import aiokafka
import kafka

from xdm.errors import ServiceError

RETRY_S = 0.2  # between metadata requests while the topic is not there yet


class TopicMissing(ServiceError):
    """A topic the reader needs is not on the broker."""


def missing(topic: str, timeout_s: float) -> TopicMissing:
    return TopicMissing(f"topic {topic} does not exist after {timeout_s:.0f} s of waiting; "
                        "create the topics first (xdm topics)")


async def find_partitions(consumer: aiokafka.AIOKafkaConsumer, topic: str,
                          timeout_s: float = 30.0) -> list[aiokafka.TopicPartition]:
    """Every partition of `topic`, in order, once the started consumer's metadata shows it."""
    deadline = time.monotonic() + timeout_s
    while True:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            # aiokafka has no public refresh; the assignment that follows needs this client's cache anyway
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic)
        if parts:
            return [aiokafka.TopicPartition(topic, p) for p in sorted(parts)]
        if time.monotonic() >= deadline:
            raise missing(topic, timeout_s)
        await asyncio.sleep(RETRY_S)


def find_partitions_blocking(consumer: kafka.KafkaConsumer, topic: str,
                             timeout_s: float = 60.0) -> list[kafka.TopicPartition]:
    """The same for a kafka-python consumer (which refreshes its metadata itself on a miss)."""
    deadline = time.monotonic() + timeout_s
    while True:
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return [kafka.TopicPartition(topic, p) for p in sorted(parts)]
        if time.monotonic() >= deadline:
            raise missing(topic, timeout_s)
        time.sleep(RETRY_S)
