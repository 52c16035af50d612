"""learner.vector_store.connect against a real Milvus Lite server that is not up yet when it is called."""

from __future__ import annotations

import sys
import threading
import time

from infra.processes import free_port, start_process
from infra.services import LITE_KEEPALIVE_S
from learner import vector_store
from xdm.config import MilvusConfig


def test_connect_retries_until_a_starting_server_answers(tmp_path):
    """pymilvus fails at once on a refused connection; connect keeps trying within its timeout. The
    server is launched bare (not through start_milvus, whose readiness probe would connect first)."""
    port = free_port()
    argv = [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(tmp_path / "milvus"),
            "--host", "127.0.0.1", "--port", str(port)]
    started: list = []
    launcher = threading.Thread(
        target=lambda: (time.sleep(1.0), started.append(start_process("milvus", argv, tmp_path / "logs"))))
    launcher.start()
    try:
        client = vector_store.connect(MilvusConfig(uri=f"http://127.0.0.1:{port}", keepalive_s=LITE_KEEPALIVE_S),
                                      timeout_s=60)
        assert started, "connect returned before the server was launched"
        assert client.list_collections() == []
        client.close()
    finally:
        launcher.join(timeout=30)
        for proc in started:
            proc.stop()


def test_clients_carry_the_keepalive_options(tmp_path):
    """On a real server: the shared channel pymilvus made has the options connect passed."""
    from infra.services import start_milvus

    proc = start_milvus(tmp_path / "milvus", tmp_path / "logs")
    try:
        cfg = MilvusConfig(uri=proc.address, keepalive_s=LITE_KEEPALIVE_S)
        client = vector_store.connect(cfg)
        assert client._handler._grpc_options == vector_store.grpc_options(cfg)  # pymilvus keeps no public view
        client.close()
    finally:
        proc.stop()
