"""What the Recall server tests serve from: the embedded stack with a worker that has read a log, and a
published version per arm trained by the learners' own code (no server: each test module starts its
own), the calls those tests make, and `xdm serve` processes with callers that record every failure."""

from __future__ import annotations

import sys
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import samples_from_log, wait_for_quiet_topics
from infra.processes import ManagedProcess, ensure_alive, free_port, spawned_child, start_process, wait_until
from infra.stack import Stack, config_env, start_services
from learner.online import OnlineLearner
from learner.publish import Publisher
from replay.producer import produce_log
from serving.client import BlockingRecallClient
from stream.topics import changelog_topic
from xdm.config import Config, apply_overrides
from xdm.log_format import read_events
from xdm.v1 import recall_pb2

ARMS = ("xdm", "sdm")


@dataclass
class ServingStack:
    stack: Stack
    learners: dict[str, OnlineLearner]  # trained on the log's first samples; train on to make new versions
    publishers: dict[str, Publisher]

    def close(self) -> None:
        for publisher in self.publishers.values():
            publisher.close()
        self.stack.stop()


def start_serving_stack(root: Path, log: Path, cfg: Config, milvus: str = "lite",
                        arms: Sequence[str] = ARMS) -> ServingStack:
    """Services (Milvus as infra.stack.start_services' `milvus` says), a worker that has read `log` to the
    end, version 1 of each of `arms` published (a test that asks one arm trains and publishes that one
    only: each arm costs a training, a publish and a load in every server); stop with close()."""
    stack = start_services(root, cfg, "test", arms=",".join(f"{arm}:{100 // len(arms)}" for arm in arms),
                           milvus=milvus)
    served = ServingStack(stack, {}, {})
    try:
        stack.start_worker()
        samples = samples_from_log(log, stack.cfg)
        for arm in arms:
            learner = OnlineLearner(stack.cfg, arm, arm)
            for i in range(0, 320, 32):
                learner.trainer.step(samples[i:i + 32])
            served.publishers[arm] = Publisher(stack.cfg, arm, arm)
            served.publishers[arm].publish(learner.trainer, 1)
            served.learners[arm] = learner
        produce_log(stack.cfg.kafka, log, progress=False)
        wait_for_quiet_topics(stack.cfg, [changelog_topic(stack.cfg), stack.cfg.kafka.samples_topic])
    except BaseException:
        served.close()
        raise
    return served


def clickers(log: Path) -> list[str]:
    """Users by clicks, most first: each test that writes events or reads exact windows takes its own."""
    return [u for u, _ in Counter(e.user_id for e in read_events(log) if e.kind == "click").most_common()]


def ask(stub, user: str, k: int = 20, arm: str = "", timeout: float = 5.0) -> recall_pb2.RecallResponse:
    return stub.Recall(recall_pb2.RecallRequest(user_id=user, k=k, arm=arm), timeout=timeout)


def answered_by_model(stub, user: str, arm: str, within_s: float = 60) -> recall_pb2.RecallResponse:
    """The arm's answer once it comes from the model (the server may still be loading the version)."""
    deadline = time.monotonic() + within_s
    while True:
        answer = ask(stub, user, arm=arm)
        if not answer.fallback or time.monotonic() > deadline:
            return answer
        time.sleep(0.3)


def scored_items(answer: recall_pb2.RecallResponse) -> list[tuple[str, float]]:
    return [(i.item_id, round(i.score, 5)) for i in answer.items]


def compute_child(server_pid: int) -> int:
    """The Recall server's running compute process."""
    child = spawned_child(server_pid)
    assert child is not None, f"server {server_pid} has no compute process"
    return child


class Servers:
    """N `xdm serve` processes of one stack, each on its own gRPC and metrics port, with settings of its own
    (`settings(i)`: config overrides of server i, e.g. its shard)."""

    def __init__(self, stack: Stack, n: int, settings: Callable[[int], Mapping[str, Any]] = lambda i: {}) -> None:
        self.stack = stack
        self.settings = settings
        self.ports = [(free_port(), free_port()) for _ in range(n)]
        self.procs: list[ManagedProcess | None] = [None] * n

    def start(self, i: int, timeout_s: float = 90.0) -> None:
        self.launch(i)
        self.wait_serving(i, timeout_s)

    def launch(self, i: int) -> None:
        """Start server i without waiting for it (servers started together load together)."""
        port, metrics = self.ports[i]
        cfg = apply_overrides(self.stack.cfg, {"serving.port": port, "serving.metrics_port": metrics, **self.settings(i)})
        proc = start_process(f"server-{i}", [sys.executable, "-m", "xdm", "--profile", "test", "serve"],
                             self.stack.root / "logs", address=f"127.0.0.1:{port}", ports=(port, metrics),
                             env=config_env(cfg))
        self.stack.processes.append(proc)  # the fixture stops it whatever happens
        self.procs[i] = proc

    def wait_serving(self, i: int, timeout_s: float = 90.0) -> None:
        proc = self.procs[i]

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

    def target(self, among: list[int] | None = None) -> str:
        """One gRPC target over these servers (all by default): the client round-robins over them."""
        chosen = range(len(self.ports)) if among is None else among
        return "ipv4:" + ",".join(f"127.0.0.1:{self.ports[i][0]}" for i in chosen)


class RequestStream:
    """Threads that call Recall back to back through the project's client until stopped, recording every
    success and failure."""

    def __init__(self, client: BlockingRecallClient, users: list[str], threads: int = 4) -> None:
        self.client = client
        self.users = users
        self.ok_at: list[float] = []
        self.failures: list[str] = []
        self.versions: set[int] = set()
        self.fallbacks = 0
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
                reply = self.client.recall(recall_pb2.RecallRequest(user_id=user, k=10), timeout_s=5)
            except grpc.RpcError as exc:
                self.failures.append(f"{exc.code().name}: {exc.details()}")
                continue
            self.ok_at.append(time.monotonic())
            self.versions.add(reply.model_version)
            self.fallbacks += reply.fallback

    def successes_between(self, start: float, end: float) -> int:
        return sum(1 for t in list(self.ok_at) if start <= t <= end)
