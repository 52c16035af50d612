"""The learner waits of replay/learner_wait.py. Catching up, against real Prometheus endpoints on loopback:
it waits while a learner is behind, lets go once it catches up, counts the waits, and fails loudly on a
stalled or missing learner. Settling: which version announcements count as a learner's progress."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry, Counter, start_http_server

from infra.processes import free_port
from learner.model_store import VersionInfo, encode_announcement
from replay.learner_wait import LearnerProgress, LearnerStalled, LearnerWait, _take


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
    learners = LearnerWait([worker.url], {"sdm": fast.url, "xdm": slow.url}, max_lag=100, poll_s=0.05)

    async def scenario() -> dict[str, int]:
        waiting = asyncio.create_task(learners.caught_up())
        await asyncio.sleep(0.5)
        assert not waiting.done()  # xdm is 2,500 behind
        slow.add("xdm_learner_samples", 2300)
        slow.add("xdm_learner_duplicate_samples", 100)
        slow.add("xdm_learner_dead_letters", 50)  # handled for good: it counts as taken
        return await asyncio.wait_for(waiting, 10)

    lags = asyncio.run(scenario())
    assert lags == {"sdm": 10, "xdm": 50}
    assert learners.stats.waits == 1 and learners.stats.wait_s >= 0.4 and learners.stats.max_lag_seen == 2500
    assert asyncio.run(learners.caught_up()) == lags and learners.stats.waits == 1  # within the lag: no wait


@pytest.mark.timeout(60)
def test_a_stalled_learner_is_an_error_naming_the_arm(endpoints):
    worker, learner = endpoints("worker"), endpoints("learner", "xdm")
    worker.add("xdm_stream_samples", 1000)
    learners = LearnerWait([worker.url], {"xdm": learner.url}, max_lag=10, stall_timeout_s=0.5, poll_s=0.05)
    with pytest.raises(LearnerStalled, match="arm xdm made no progress for 0.5 s .1,000 samples behind"):
        asyncio.run(learners.caught_up())


@pytest.mark.timeout(60)
def test_an_unreachable_learner_is_waited_for_then_reported(endpoints):
    worker = endpoints("worker")
    learners = LearnerWait([worker.url], {"xdm": f"http://127.0.0.1:{free_port()}/metrics"}, stall_timeout_s=0.5,
                       poll_s=0.05)
    with pytest.raises(LearnerStalled, match="arm xdm .*unreachable"):
        asyncio.run(learners.caught_up())


def test_settling_counts_each_learners_newest_announcement_only():
    def announce(arm: str, version: int, trained: int) -> bytes:
        return encode_announcement(VersionInfo(arm=arm, version=version, collection=f"c_{arm}_v{version}",
                                               tower_uri="", published_ms=0, trained_samples=trained, items=1))

    progress = LearnerProgress()
    learners = ("sdm", "xdm")
    assert _take(progress, announce("xdm", 1, 100), learners)
    assert not _take(progress, announce("xdm", 1, 900), learners)  # a repeat of version 1
    assert not _take(progress, announce("other", 5, 900), learners)  # not an arm waited for
    assert not _take(progress, b"not an announcement", learners)
    assert not _take(progress, announce("xdm", 2, 100), learners)  # newer, but no more samples: no progress
    assert _take(progress, announce("sdm", 3, 80), learners)
    assert progress.trained_samples == {"xdm": 100, "sdm": 80} and progress.versions == {"xdm": 2, "sdm": 3}
