"""Two `xdm serve` processes behind client-side round robin keep answering while each is restarted.

The client is configured the way a production client of several servers should be (README, "Scale-out"):
  - target `ipv4:127.0.0.1:P1,127.0.0.1:P2` (in Kubernetes: `dns:///xdm-recall-headless...:50051`) with
    the round_robin LB policy, so calls spread over every server and skip one that is down;
  - a retry policy on UNAVAILABLE and CANCELLED (Recall is a read: retrying it is safe), which covers
    the calls that race a server's shutdown or land on a connection that just broke;
  - wait_for_ready, so a call made while no subchannel is READY waits for one instead of failing fast;
  - a short reconnect backoff, so a restarted server is back in rotation within about a second.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import samples_from_log
from infra.processes import ManagedProcess, ensure_alive, free_port, start_process, wait_until
from infra.stack import Stack, config_env
from learner.online import OnlineLearner
from learner.publish import Publisher
from xdm.config import apply_overrides
from xdm.v1 import recall_pb2, recall_pb2_grpc

SERVICE_CONFIG = {
    "methodConfig": [{
        "name": [{"service": "xdm.v1.Recall"}],
        "waitForReady": True,
        "timeout": "5s",
        "retryPolicy": {
            "maxAttempts": 5,
            "initialBackoff": "0.05s",
            "maxBackoff": "0.5s",
            "backoffMultiplier": 2,
            # CANCELLED too: a server shutting down (grpc.aio server.stop, any grace) kills the calls that
            # reached it but were not yet handed to the servicer, and the client sees CANCELLED (measured
            # here: 4-5 per 6 restarts, with or without a drain pause after NOT_SERVING). A call the
            # client cancels itself is never retried, so this only retries the server's cancellations.
            "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"],
        },
    }],
}


def round_robin_channel(target: str) -> grpc.Channel:
    """A channel over several servers: round robin, retries on UNAVAILABLE, quick reconnects."""
    return grpc.insecure_channel(target, options=[
        ("grpc.lb_policy_name", "round_robin"),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", json.dumps(SERVICE_CONFIG)),
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.min_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ])


class Servers:
    """N `xdm serve` processes of one stack, each on its own gRPC and metrics port."""

    def __init__(self, stack: Stack, n: int) -> None:
        self.stack = stack
        self.ports = [(free_port(), free_port()) for _ in range(n)]
        self.procs: list[ManagedProcess | None] = [None] * n

    def start(self, i: int, timeout_s: float = 90.0) -> None:
        port, metrics = self.ports[i]
        cfg = apply_overrides(self.stack.cfg, {"serving.port": port, "serving.metrics_port": metrics})
        proc = start_process(f"server-{i}", [sys.executable, "-m", "xdm", "--profile", "test", "serve"],
                             self.stack.root / "logs", address=f"127.0.0.1:{port}", ports=(port, metrics),
                             env=config_env(cfg))
        self.stack.processes.append(proc)  # the fixture stops it whatever happens
        self.procs[i] = proc

        def serving() -> bool:
            ensure_alive(proc)
            with grpc.insecure_channel(proc.address) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
            return reply.status == health_pb2.HealthCheckResponse.SERVING

        wait_until(serving, timeout_s, f"server {i} SERVING", interval_s=0.2)

    def stop(self, i: int) -> None:
        proc = self.procs[i]
        proc.stop()  # SIGTERM: NOT_SERVING, in-flight calls finish within serving.grace_s, port released
        self.stack.processes.remove(proc)

    def answers(self, i: int) -> float:
        """Recall answers this server process has given (its Prometheus counter)."""
        url = f"http://127.0.0.1:{self.ports[i][1]}/metrics"
        text = urllib.request.urlopen(url, timeout=2).read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("xdm_recall_answers_total{"))

    @property
    def target(self) -> str:
        return "ipv4:" + ",".join(f"127.0.0.1:{port}" for port, _ in self.ports)


class RequestStream:
    """Threads that call Recall back to back until stopped, recording every success and failure."""

    def __init__(self, channel: grpc.Channel, users: list[str], threads: int = 4) -> None:
        self.stub = recall_pb2_grpc.RecallStub(channel)
        self.users = users
        self.ok_at: list[float] = []
        self.failures: list[str] = []
        self.versions: set[int] = set()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(t,), daemon=True) for t in range(threads)]

    def __enter__(self) -> RequestStream:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _run(self, offset: int) -> None:
        i = offset
        while not self._stop.is_set():
            user = self.users[i % len(self.users)]
            i += 7
            try:
                reply = self.stub.Recall(recall_pb2.RecallRequest(user_id=user, k=10), timeout=5, wait_for_ready=True)
            except grpc.RpcError as exc:
                self.failures.append(f"{exc.code().name}: {exc.details()}")
                continue
            self.ok_at.append(time.monotonic())
            self.versions.add(reply.model_version)

    def successes_between(self, start: float, end: float) -> int:
        return sum(1 for t in list(self.ok_at) if start <= t <= end)


@pytest.mark.timeout(300)
def test_two_round_robin_servers_fail_no_request_while_each_is_restarted(stack, tiny_log):
    samples = samples_from_log(tiny_log, stack.cfg)
    learner = OnlineLearner(stack.cfg, "xdm", "xdm")
    learner.trainer.step(samples[:32])
    publisher = Publisher(stack.cfg, "xdm", "xdm")
    publisher.publish(learner.trainer, 1)  # a tiny model: both servers load version 1 from the store
    publisher.close()
    users = sorted({s.user_id for s in samples})

    servers = Servers(stack, 2)
    for i in range(2):
        servers.start(i)
    channel = round_robin_channel(servers.target)
    with RequestStream(channel, users) as stream:
        wait_until(lambda: servers.answers(0) > 0 and servers.answers(1) > 0, 30, "both servers answering")
        for i in range(2):
            down_at = time.monotonic()
            servers.stop(i)
            servers.start(i)
            up_at = time.monotonic()
            assert stream.successes_between(down_at, up_at) > 0, "nobody answered while a server was down"
            wait_until(lambda i=i: servers.answers(i) > 0, 30, f"restarted server {i} back in rotation")
        answered = len(stream.ok_at)
        wait_until(lambda: len(stream.ok_at) > answered + 50, 30, "answers after both restarts")
    channel.close()

    assert stream.failures == [], stream.failures[:5]
    assert len(stream.ok_at) > 200
    assert stream.versions == {1}  # every answer came from a server that had loaded the published version
