"""A compute child that hangs without dying (SIGSTOP, no test-only code in the server): the batch in flight
ends UNAVAILABLE, the child is killed at serving.compute_timeout_s and replaced, and the server answers from
a tower again. Before the deadline existed the batch runner waited on the child for good: every later
Recall of a user with clicks timed out while health said SERVING."""

from __future__ import annotations

import os
import signal
import time
import urllib.request
from collections import Counter
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import samples_from_log, wait_for_quiet_topics
from infra.processes import free_port, running, wait_until
from infra.stack import start_services
from learner.online import OnlineLearner
from learner.publish import Publisher
from replay.producer import produce_log
from serving_stack import compute_child
from stream.topics import changelog_topic
from xdm.config import load_config
from xdm.log_format import read_events
from xdm.v1 import recall_pb2, recall_pb2_grpc

COMPUTE_TIMEOUT_S = 2.0
SEARCH_TIMEOUT_S = 1.0


@pytest.mark.timeout(300)
def test_a_hung_compute_child_is_killed_and_replaced_and_towers_answer_again(tmp_path, small_log):
    # small_log: one user's windows are all a tower's answer needs, and a worker reads it in seconds
    metrics_port = free_port()
    cfg = load_config("test", env={}, overrides={"serving.compute_timeout_s": str(COMPUTE_TIMEOUT_S),
                                                 "serving.search_timeout_s": str(SEARCH_TIMEOUT_S),
                                                 "serving.metrics_port": str(metrics_port)})
    stack = start_services(tmp_path / "stack", cfg, "test")
    stopped = None
    try:
        _publish_a_version(stack.cfg, small_log)
        stack.start_worker()
        server = stack.start_server()
        produce_log(stack.cfg.kafka, small_log, progress=False)
        wait_for_quiet_topics(stack.cfg, [changelog_topic(stack.cfg)])
        user = _most_clicking_user(small_log)
        with grpc.insecure_channel(f"127.0.0.1:{stack.cfg.serving.port}") as channel:
            stub = recall_pb2_grpc.RecallStub(channel)
            before = _answered_by_a_tower(stub, user)
            stopped = compute_child(server.pid)
            os.kill(stopped, signal.SIGSTOP)

            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as in_flight:
                _ask(stub, user, timeout=30)
            assert in_flight.value.code() == grpc.StatusCode.UNAVAILABLE
            assert time.monotonic() - started < COMPUTE_TIMEOUT_S + 5  # margin for a loaded machine
            assert _health(channel) == health_pb2.HealthCheckResponse.SERVING  # answered: fallbacks still work

            again = _answered_by_a_tower(stub, user)  # the items may differ: the worker may have moved on
            assert again.model_version == before.model_version and len(again.items) == 20
            wait_until(lambda: not running(stopped), 10, "the hung child gone")
            assert compute_child(server.pid) != stopped
            assert _hung_restarts(metrics_port) >= 1  # a legitimately slow batch on a loaded machine counts too
            assert _health(channel) == health_pb2.HealthCheckResponse.SERVING
    finally:
        if stopped is not None and running(stopped):
            os.kill(stopped, signal.SIGKILL)  # a stopped child outlives its closed pipes
        stack.stop()


def _publish_a_version(cfg, log: Path) -> None:
    learner = OnlineLearner(cfg, "xdm", "xdm")
    samples = samples_from_log(log, cfg)
    for i in range(0, 320, 32):
        learner.trainer.step(samples[i:i + 32])
    publisher = Publisher(cfg, "xdm", "xdm")
    try:
        publisher.publish(learner.trainer, 1)
    finally:
        publisher.close()


def _most_clicking_user(log: Path) -> str:
    return Counter(e.user_id for e in read_events(log) if e.kind == "click").most_common(1)[0][0]


def _ask(stub, user: str, timeout: float = 5.0) -> recall_pb2.RecallResponse:
    return stub.Recall(recall_pb2.RecallRequest(user_id=user, k=20), timeout=timeout)


def _answered_by_a_tower(stub, user: str, within_s: float = 90.0) -> recall_pb2.RecallResponse:
    """The first answer that is not the popular fallback; UNAVAILABLE is allowed on the way (a child being
    replaced), any other failure is not."""
    codes: Counter = Counter()
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            answer = _ask(stub, user)
            if not answer.fallback:
                return answer
        except grpc.RpcError as err:
            codes[err.code().name] += 1
            assert err.code() == grpc.StatusCode.UNAVAILABLE, err
        time.sleep(0.2)
    raise AssertionError(f"no answer from a tower within {within_s} s: {dict(codes)}")


def _health(channel: grpc.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service="xdm.v1.Recall"), timeout=2).status


def _hung_restarts(port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith('xdm_recall_compute_restarts_total{cause="hung"}'):
            return float(line.split()[-1])
    return 0.0
