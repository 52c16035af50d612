"""A topic mirror on a topic that never goes quiet still becomes ready, and holds every record written
before it started. A busy windows changelog is what a Recall server restarted under traffic reads: a
mirror that waited for an empty fetch never got there, and the server exited at its start-up deadline."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from kafka import KafkaProducer

from infra.services import start_broker
from infra.topics import ensure_topics
from stream.mirror import TopicMirror
from xdm.config import apply_overrides, load_config

WRITE_EVERY_S = 0.05  # faster than the mirror's 200 ms fetch: no fetch comes back empty


@pytest.fixture
def kafka_cfg(tmp_path):
    broker = start_broker(tmp_path / "logs")
    try:
        cfg = apply_overrides(load_config("test", env={}), {"kafka.bootstrap": broker.address})
        ensure_topics(cfg)
        yield cfg.kafka
    finally:
        broker.stop()


def _keep_writing(bootstrap: str, topic: str, stop: threading.Event, written: list[str]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    try:
        i = 0
        while not stop.is_set():
            key = f"k{i}"
            producer.send(topic, key=key.encode(), value=b"v").get(timeout=10)
            written.append(key)
            i += 1
            time.sleep(WRITE_EVERY_S)
    finally:
        producer.close(timeout=5)


def test_a_mirror_of_a_busy_topic_catches_up(kafka_cfg):
    topic = kafka_cfg.items_topic
    stop, written = threading.Event(), []
    writer = threading.Thread(target=_keep_writing, args=(kafka_cfg.bootstrap, topic, stop, written), daemon=True)
    writer.start()
    try:
        deadline = time.monotonic() + 30
        while len(written) < 40 and time.monotonic() < deadline:
            time.sleep(0.1)
        before_start = list(written)

        async def mirror_keys() -> set[str]:
            mirror = TopicMirror(kafka_cfg, topic, bytes, name="busy")
            await mirror.start()
            try:
                await mirror.wait_caught_up(40)
                return set(mirror.values)
            finally:
                await mirror.stop()

        keys = asyncio.run(mirror_keys())
        assert writer.is_alive(), "the writer stopped: the topic was not busy while the mirror caught up"
    finally:
        stop.set()
        writer.join(timeout=15)
    assert len(before_start) >= 40
    assert set(before_start) <= keys
