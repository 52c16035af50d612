"""The replay's learner gate against real Prometheus endpoints on loopback: it waits while a learner is
behind, lets go once it catches up, counts the waits, and fails loudly on a stalled or missing learner."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry, Counter, start_http_server

from infra.processes import free_port
from replay.learner_gate import LearnerGate, LearnerStalled


class Endpoint:
    """One process's metrics: a worker (no labels) or a learner (arm label), served over HTTP."""

    def __init__(self, kind: str, arm: str | None = None) -> None:
        self.registry = CollectorRegistry()
        self.port = free_port()
        labels = ["arm"] if arm else []
        names = ["xdm_stream_samples"] if kind == "worker" else [
            "xdm_learner_samples", "xdm_learner_duplicate_samples", "xdm_learner_dead_letters"]
        self.counters = {n: Counter(n, n, labels, registry=self.registry) for n in names}
        self.arm = arm
        self.server, self.thread = start_http_server(self.port, addr="127.0.0.1", registry=self.registry)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def add(self, name: str, n: int) -> None:
        counter = self.counters[name]
        (counter.labels(self.arm) if self.arm else counter).inc(n)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoints():
    made: list[Endpoint] = []

    def make(kind: str, arm: str | None = None) -> Endpoint:
        made.append(Endpoint(kind, arm))
        return made[-1]

    yield make
    for e in made:
        e.close()


@pytest.mark.timeout(60)
def test_waits_for_the_slow_learner_then_counts_the_wait(endpoints):
    worker, fast, slow = endpoints("worker"), endpoints("learner", "sdm"), endpoints("learner", "xdm")
    # A registry shared by two arms' labels must count only its own arm: sdm's numbers sit next to xdm's.
    slow.counters["xdm_learner_samples"].labels("sdm").inc(10_000)
    worker.add("xdm_stream_samples", 3000)
    fast.add("xdm_learner_samples", 2990)
    slow.add("xdm_learner_samples", 500)
    gate = LearnerGate([worker.url], {"sdm": fast.url, "xdm": slow.url}, max_lag=100, poll_s=0.05)

    async def scenario() -> dict[str, int]:
        waiting = asyncio.create_task(gate.wait())
        await asyncio.sleep(0.5)
        assert not waiting.done()  # xdm is 2,500 behind
        slow.add("xdm_learner_samples", 2300)
        slow.add("xdm_learner_duplicate_samples", 100)
        slow.add("xdm_learner_dead_letters", 50)  # handled for good: it counts as taken
        return await asyncio.wait_for(waiting, 10)

    lags = asyncio.run(scenario())
    assert lags == {"sdm": 10, "xdm": 50}
    assert gate.stats.waits == 1 and gate.stats.wait_s >= 0.4 and gate.stats.max_lag_seen == 2500
    assert asyncio.run(gate.wait()) == lags and gate.stats.waits == 1  # within the lag: no wait


@pytest.mark.timeout(60)
def test_a_stalled_learner_is_an_error_naming_the_arm(endpoints):
    worker, learner = endpoints("worker"), endpoints("learner", "xdm")
    worker.add("xdm_stream_samples", 1000)
    gate = LearnerGate([worker.url], {"xdm": learner.url}, max_lag=10, stall_timeout_s=0.5, poll_s=0.05)
    with pytest.raises(LearnerStalled, match="arm xdm made no progress for 0.5 s .1,000 samples behind"):
        asyncio.run(gate.wait())


@pytest.mark.timeout(60)
def test_an_unreachable_learner_is_waited_for_then_reported(endpoints):
    worker = endpoints("worker")
    gate = LearnerGate([worker.url], {"xdm": f"http://127.0.0.1:{free_port()}/metrics"}, stall_timeout_s=0.5,
                       poll_s=0.05)
    with pytest.raises(LearnerStalled, match="arm xdm .*unreachable"):
        asyncio.run(gate.wait())
