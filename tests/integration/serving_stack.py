"""What the Recall server tests serve from: the embedded stack with a worker that has read a log, and a
published version per arm trained by the learners' own code (no server: each test module starts its
own), and the calls those tests make."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from conftest import samples_from_log, wait_for_quiet_topics
from infra.processes import spawned_child
from infra.stack import Stack, start_services
from learner.online import OnlineLearner
from learner.publish import Publisher
from replay.producer import produce_log
from stream.topics import changelog_topic
from xdm.config import Config
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


def start_serving_stack(root: Path, log: Path, cfg: Config) -> ServingStack:
    """Services, a worker that has read `log` to the end, version 1 of each arm published; stop with close()."""
    stack = start_services(root, cfg, "test", arms=",".join(f"{arm}:50" for arm in ARMS))
    served = ServingStack(stack, {}, {})
    try:
        stack.start_worker()
        samples = samples_from_log(log, stack.cfg)
        for arm in ARMS:
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
