"""The server as an operator runs it: TLS only when configured, Prometheus metrics, clean exit on SIGTERM."""

from __future__ import annotations

import subprocess
import sys
import urllib.request

import grpc
import pytest

from infra.processes import free_port, port_open, start_process, wait_until
from infra.stack import config_env
from xdm.config import apply_overrides
from xdm.v1 import recall_pb2, recall_pb2_grpc


def _self_signed(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


@pytest.mark.timeout(120)
def test_tls_metrics_and_sigterm(stack, tmp_path):
    cert, key = _self_signed(tmp_path)
    port, metrics = free_port(), free_port()
    cfg = apply_overrides(stack.cfg, {"serving.port": port, "serving.metrics_port": metrics,
                                      "serving.tls_cert": str(cert), "serving.tls_key": str(key)})
    server = start_process("tls-server", [sys.executable, "-m", "xdm", "--profile", "test", "serve"],
                           stack.root / "logs", ports=(port,), env=config_env(cfg))
    try:
        wait_until(lambda: port_open("127.0.0.1", port), 60, "TLS server")
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        with grpc.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
            answer = recall_pb2_grpc.RecallStub(channel).Recall(
                recall_pb2.RecallRequest(user_id="new-user", k=5, request_id="t1"), timeout=10)
        assert answer.fallback and answer.request_id == "t1" and answer.model_version == 0
        with grpc.insecure_channel(f"127.0.0.1:{port}") as plain:
            with pytest.raises(grpc.RpcError):
                recall_pb2_grpc.RecallStub(plain).Recall(recall_pb2.RecallRequest(user_id="u", k=5), timeout=3)
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5).read().decode()
        assert 'xdm_recall_answers_total{arm="xdm",fallback="true"} 1.0' in text
        assert "xdm_recall_latency_seconds_bucket" in text and "xdm_recall_errors_total" in text
    finally:
        server.stop()
    assert server.popen.returncode == 0, server.log_tail()
