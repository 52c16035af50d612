"""Fixtures that start real services (tansu broker, Milvus Lite, a Milvus standalone) on free loopback ports
and always stop them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from infra.processes import ManagedProcess
from infra.services import start_milvus_standalone
from infra.stack import start_services
from replay.simulate import simulate
from stream.samples import Sample, flush, step
from stream.windows import UserState
from xdm.config import Config, load_config
from xdm.log_format import read_events, read_items
from xdm.records import Item

torch.set_num_threads(1)  # small test models: extra threads only contend for the 2 cores


@pytest.fixture
def test_config():
    """The `test` profile without the caller's XDM_* environment leaking in."""
    return load_config("test", env={})


@pytest.fixture
def stack(tmp_path: Path, test_config):
    """Broker + Milvus Lite + topics, fresh for one test; every process is stopped afterwards."""
    started = start_services(tmp_path / "stack", test_config, "test")
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="session")
def milvus_standalone(tmp_path_factory) -> ManagedProcess:
    """One real Milvus standalone for the whole test run, started when a test first asks for it (seconds;
    its binary is unpacked once per machine). Tests keep apart by milvus.collection_prefix."""
    root = tmp_path_factory.mktemp("milvus-standalone")
    server = start_milvus_standalone(root / "data", root / "logs")
    try:
        yield server
    finally:
        server.kill()  # its data is thrown away: a SIGTERM would wait out Milvus's slow graceful stop
        server.stop()  # reaps it and waits until its ports are released


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/integration" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.integration)


def samples_from_log(log_dir: Path, cfg: Config) -> list[Sample]:
    """Training samples of a log, made by the stream's own rules (what a worker would emit)."""
    items = read_items(log_dir)
    states: dict[str, UserState] = {}
    out: list[Sample] = []
    for event in read_events(log_dir):
        state = states.setdefault(event.user_id, UserState())
        out.extend(step(state, event, items.get(event.item_id) or Item(event.item_id), cfg.windows, cfg.samples).samples)
    for state in states.values():
        out.extend(flush(state, cfg.windows, cfg.samples))
    return out


@pytest.fixture(scope="session")
def tiny_log(tmp_path_factory) -> Path:
    """A small simulated world shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("tiny-log")
    simulate(100, 300, 6, 11, out, progress=False)
    return out


@pytest.fixture(scope="session")
def small_log(tmp_path_factory) -> Path:
    """A world of a sixth of tiny_log's events (a worker reads it in seconds, not tens of seconds) with
    581 samples and 12 users with clicks, in both of the test profile's partitions: for tests that need a
    worker to have read a log, not a large one."""
    out = tmp_path_factory.mktemp("small-log")
    simulate(30, 300, 3, 11, out, progress=False)
    return out


def wait_for_quiet_topics(cfg: Config, topics: list[str], quiet_s: float = 3.0, timeout_s: float = 180.0) -> None:
    """Wait until nothing new was written to `topics` for quiet_s: the workers have caught up."""
    import time

    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=cfg.kafka.bootstrap)
    try:
        parts = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or [])]
        deadline = time.monotonic() + timeout_s
        last, since = None, time.monotonic()
        while time.monotonic() < deadline:
            ends = consumer.end_offsets(parts)
            if ends != last:
                last, since = ends, time.monotonic()
            elif time.monotonic() - since >= quiet_s:
                return
            time.sleep(0.5)
        raise TimeoutError(f"topics {topics} still growing after {timeout_s} s")
    finally:
        consumer.close()
