"""Users idle past stream.user_retention_ms leave a real worker's windows table and, through a tombstone on
its changelog, the serving replica; a user within the retention stays."""

from __future__ import annotations

import asyncio
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from kafka import KafkaProducer
from rocksdict import AccessType, Options, Rdict

from infra.processes import free_port, start_process, wait_until
from infra.services import start_broker
from infra.stack import config_env
from infra.topics import ensure_topics
from stream.reader import WindowsReader
from stream.wire import encode_event
from xdm.config import Config, apply_overrides
from xdm.records import Event
from xdm.time_units import DAY_MS

ROOT = Path(__file__).resolve().parents[2]
OFFSET_KEY = b"__faust\0offset__"  # Faust keeps a partition's changelog offset in the same RocksDB


@pytest.mark.timeout(180)
def test_an_idle_user_leaves_the_worker_table_and_the_serving_replica(tmp_path, test_config):
    broker = start_broker(tmp_path / "logs")
    metrics_port = free_port()
    cfg = apply_overrides(test_config, {"kafka.bootstrap": broker.address, "stream.user_retention_ms": DAY_MS,
                                        "stream.retention_sweep_s": 0.5, "stream.metrics_port": metrics_port,
                                        "stream.data_dir": str(tmp_path / "worker")})
    worker = None
    try:
        ensure_topics(cfg)
        worker = start_process("worker", [sys.executable, "-m", "xdm", "--profile", "test", "worker"],
                               tmp_path / "logs", env=config_env(cfg), cwd=ROOT)
        now = int(time.time() * 1000)
        asyncio.run(_idle_user_dropped(cfg, now))
        wait_until(lambda: _metric(metrics_port, "xdm_stream_expired_users_total") == 1, 10, "expired_users counted")
        worker.stop()
        rows = _table_rows(tmp_path / "worker")
        assert b"stays" in rows and b"gone" not in rows
    finally:
        if worker is not None:
            worker.stop()
        broker.stop()


async def _idle_user_dropped(cfg: Config, now: int) -> None:
    reader = WindowsReader(cfg)
    await reader.start()
    try:
        # One partition for both users: the retention clock is a partition's newest event.
        _click(cfg, "gone", now - 3 * DAY_MS)
        await _until(lambda: reader.rows("gone") is not None, "the first user's windows in the replica")
        await asyncio.sleep(1.5)  # sweeps ran: alone in its partition, the user is not idle
        assert reader.rows("gone") is not None
        _click(cfg, "stays", now - DAY_MS // 2)  # the partition's clock moves 2.5 days past "gone"
        await _until(lambda: reader.rows("stays") is not None and reader.rows("gone") is None,
                     "the idle user tombstoned in the replica")
    finally:
        await reader.stop()


def _click(cfg: Config, user: str, ts_ms: int) -> None:
    producer = KafkaProducer(bootstrap_servers=cfg.kafka.bootstrap, acks="all")
    try:
        event = Event(f"{user}-click", ts_ms, user, "item-1", "click")
        producer.send(cfg.kafka.clicks_topic, key=user.encode(), value=encode_event(event), partition=0)
        producer.flush(timeout=10)
    finally:
        producer.close()


async def _until(check, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout_s} s: {what}")
        await asyncio.sleep(0.1)


def _metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def _table_rows(data_dir: Path) -> set[bytes]:
    """Keys of a stopped worker's windows table, all partitions."""
    keys: set[bytes] = set()
    paths = sorted(data_dir.rglob("windows-*.db"))
    assert paths, f"no RocksDB table under {data_dir}"
    for path in paths:
        db = Rdict(str(path), options=Options(raw_mode=True), access_type=AccessType.read_only())
        try:
            keys.update(key for key in db.keys() if key != OFFSET_KEY)
        finally:
            db.close()
    return keys
