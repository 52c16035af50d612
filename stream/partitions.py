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
from dataclasses import dataclass
from typing import Sequence

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


@dataclass(frozen=True)
class PartitionShare:
    """Some of a topic's partitions (a Recall server's shard of the changelog, xdm/shards.py), for a topic
    that must have `of` partitions: with another count, the clients' hash would route users elsewhere."""

    partitions: tuple[int, ...]
    of: int  # the topic's partition count the share was dealt from (kafka.partitions)

    def pick(self, topic: str, found: Sequence[int]) -> list[int]:
        """These partitions, after checking them against the partitions `found` on the broker."""
        if len(found) != self.of:
            raise TopicLayoutMismatch(f"topic {topic} has {len(found)} partitions but kafka.partitions is {self.of}: "
                                      "users would be routed to shards by the wrong count; set kafka.partitions to "
                                      f"{len(found)} on servers and clients (or recreate the topic)")
        absent = sorted(set(self.partitions) - set(found))
        if absent:
            raise TopicLayoutMismatch(f"topic {topic} has no partition {absent} (it has {sorted(found)}); "
                                      "check serving.shards, serving.shard and serving.shard_partitions")
        return sorted(self.partitions)


class TopicLayoutMismatch(ServiceError):
    """A topic's partitions are not the ones a reader's configuration was made for."""
