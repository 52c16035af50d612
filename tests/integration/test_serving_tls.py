"""The server as an operator runs it: TLS only when configured, Prometheus metrics, clean exit on SIGTERM;
and guarded (issue 25 §5): a bearer token, reflection off, a request size limit, a plaintext health-only port,
reached with TLS and the token by the project's own clients (serving/client.py and `xdm recall`)."""

from __future__ import annotations

import dataclasses
import secrets
import subprocess
import sys
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from infra.processes import free_port, port_open, start_process, wait_until
from infra.stack import config_env, start_services
from serving.client import recall
from serving.servicer import MAX_REQUEST_ID
from xdm.config import Config, apply_overrides, load_config
from xdm.recall_channel import recall_channel
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


@dataclasses.dataclass
class Guarded:
    """A server with TLS, a bearer token, reflection off and a health-only port; `client` is what callers set."""

    server_cfg: Config
    client: Config
    address: str
    health_address: str


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    root = tmp_path_factory.mktemp("guarded")
    cert, key = _self_signed(root)
    token = root / "token"
    token.write_text(secrets.token_urlsafe(32) + "\n")
    stack = start_services(root / "stack", load_config("test", env={}), "test")
    try:
        port, health_port = stack.cfg.serving.port, free_port()
        server_cfg = apply_overrides(stack.cfg, {
            "serving.tls_cert": str(cert), "serving.tls_key": str(key), "serving.auth_token_file": str(token),
            "serving.reflection": False, "serving.health_port": health_port})
        client = apply_overrides(stack.cfg, {"serving.tls_ca": str(cert), "serving.auth_token_file": str(token)})
        server = start_process("guarded-server", [sys.executable, "-m", "xdm", "--profile", "test", "serve"],
                               stack.root / "logs", ports=(port, health_port), env=config_env(server_cfg))
        try:
            wait_until(lambda: port_open("127.0.0.1", port) and port_open("127.0.0.1", health_port), 90,
                       "guarded server")
            yield Guarded(server_cfg, client, f"127.0.0.1:{port}", f"127.0.0.1:{health_port}")
        finally:
            server.stop()
    finally:
        stack.stop()


def _with(cfg: Config, **serving) -> Config:
    return apply_overrides(cfg, {f"serving.{name}": value for name, value in serving.items()})


@pytest.mark.timeout(180)
def test_the_client_speaks_tls_with_the_token_and_a_call_without_it_is_unauthenticated(guarded, tmp_path):
    answer = recall(guarded.client, guarded.address, "new-user", k=5, request_id="t1", timeout_s=10)
    assert answer.fallback and answer.request_id == "t1"  # an empty system answers from the (empty) popular list
    wrong = tmp_path / "wrong-token"
    wrong.write_text("not-the-token")
    for cfg in (_with(guarded.client, auth_token_file=""), _with(guarded.client, auth_token_file=str(wrong))):
        with pytest.raises(grpc.RpcError) as refused:
            recall(cfg, guarded.address, "new-user", k=5, timeout_s=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, refused.value.details()
        assert "bearer token" in refused.value.details()


@pytest.mark.timeout(180)
def test_xdm_recall_speaks_tls_with_the_token(guarded):
    argv = [sys.executable, "-m", "xdm", "--profile", "test", "recall", "new-user", "-k", "3",
            "--address", guarded.address]
    ok = subprocess.run(argv, env=config_env(guarded.client), capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "Recall(new-user)" in ok.stdout and "FALLBACK" in ok.stdout
    no_token = subprocess.run(argv, env=config_env(_with(guarded.client, auth_token_file="")), capture_output=True,
                              text=True, timeout=120)
    assert no_token.returncode == 2 and "UNAUTHENTICATED" in no_token.stderr, no_token.stderr


@pytest.mark.timeout(180)
def test_health_needs_no_token_and_has_a_plaintext_port_that_serves_nothing_else(guarded):
    request = health_pb2.HealthCheckRequest(service="xdm.v1.Recall")
    with recall_channel(_with(guarded.client, auth_token_file="").serving, guarded.address) as tls_only:
        assert health_pb2_grpc.HealthStub(tls_only).Check(request, timeout=10).status == health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(guarded.health_address) as plain:
        assert health_pb2_grpc.HealthStub(plain).Check(request, timeout=10).status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as recall_there:
            recall_pb2_grpc.RecallStub(plain).Recall(recall_pb2.RecallRequest(user_id="u", k=5), timeout=10)
        assert recall_there.value.code() == grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.timeout(180)
def test_reflection_is_not_served_when_switched_off(guarded):
    with recall_channel(guarded.client.serving, guarded.address) as channel:  # with the token: off is off
        replies = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
        with pytest.raises(grpc.RpcError) as off:
            next(replies)
        assert off.value.code() == grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.timeout(180)
def test_an_oversized_request_is_refused_and_the_server_keeps_serving(guarded):
    limit = guarded.server_cfg.serving.max_request_bytes
    with recall_channel(guarded.client.serving, guarded.address) as channel:
        stub = recall_pb2_grpc.RecallStub(channel)
        for _ in range(3):
            with pytest.raises(grpc.RpcError) as too_big:
                stub.Recall(recall_pb2.RecallRequest(user_id="u" * (2 * limit), k=5), timeout=10)
            assert too_big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, too_big.value.details()
        answer = stub.Recall(recall_pb2.RecallRequest(user_id="new-user", k=5, request_id="after"), timeout=10)
    assert answer.request_id == "after"


@pytest.mark.timeout(180)
def test_a_request_id_past_its_cap_is_invalid(guarded):
    with recall_channel(guarded.client.serving, guarded.address) as channel:
        stub = recall_pb2_grpc.RecallStub(channel)
        with pytest.raises(grpc.RpcError) as bad:
            stub.Recall(recall_pb2.RecallRequest(user_id="u", k=5, request_id="r" * (MAX_REQUEST_ID + 1)), timeout=10)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"request_id is longer than {MAX_REQUEST_ID}" in bad.value.details()
        at_cap = stub.Recall(recall_pb2.RecallRequest(user_id="u", k=5, request_id="r" * MAX_REQUEST_ID), timeout=10)
    assert at_cap.request_id == "r" * MAX_REQUEST_ID
