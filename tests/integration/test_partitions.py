"""stream/partitions.py against a real broker: a topic created after the reader started is found (aiokafka
answers from a cache older than the topic unless refreshed), and a missing one ends at the deadline with
an error that says how to create it."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import aiokafka
import kafka
import pytest
from kafka.admin import KafkaAdminClient, NewTopic

from infra.services import start_broker
from stream.partitions import TopicMissing, find_partitions, find_partitions_blocking

PARTITIONS = 3


@pytest.fixture(scope="module")
def bootstrap(tmp_path_factory):
    broker = start_broker(tmp_path_factory.mktemp("partitions") / "logs")
    try:
        yield broker.address
    finally:
        broker.stop()


def _create_later(bootstrap: str, topic: str, after_s: float) -> threading.Thread:
    def create() -> None:
        time.sleep(after_s)
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
        admin.close()

    thread = threading.Thread(target=create, daemon=True)
    thread.start()
    return thread


def _topic() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


@pytest.mark.timeout(60)
def test_aiokafka_reader_finds_a_topic_created_after_it_started(bootstrap):
    topic = _topic()

    async def find() -> list[aiokafka.TopicPartition]:
        consumer = aiokafka.AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            assert consumer.partitions_for_topic(topic) is None  # its metadata predates the topic
            _create_later(bootstrap, topic, 1.0)
            return await find_partitions(consumer, topic, timeout_s=20)
        finally:
            await consumer.stop()

    assert asyncio.run(find()) == [aiokafka.TopicPartition(topic, p) for p in range(PARTITIONS)]


@pytest.mark.timeout(60)
def test_aiokafka_reader_of_a_missing_topic_stops_at_the_deadline_naming_xdm_topics(bootstrap):
    topic = _topic()

    async def find() -> None:
        consumer = aiokafka.AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            await find_partitions(consumer, topic, timeout_s=1.0)
        finally:
            await consumer.stop()

    started = time.monotonic()
    with pytest.raises(TopicMissing, match=rf"topic {topic} does not exist.*xdm topics"):
        asyncio.run(find())
    assert time.monotonic() - started < 15


@pytest.mark.timeout(60)
def test_kafka_python_reader_finds_a_topic_created_after_it_started_and_misses_none(bootstrap):
    topic = _topic()
    consumer = kafka.KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        _create_later(bootstrap, topic, 1.0)
        found = find_partitions_blocking(consumer, topic, timeout_s=20)
        assert found == [kafka.TopicPartition(topic, p) for p in range(PARTITIONS)]
        started = time.monotonic()
        with pytest.raises(TopicMissing, match=r"does not exist.*xdm topics"):
            find_partitions_blocking(consumer, _topic(), timeout_s=1.0)
        assert time.monotonic() - started < 15
    finally:
        consumer.close()
