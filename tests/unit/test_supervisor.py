"""The supervisor of background tasks: failures are counted and restarted with backoff, and a task that
stays failed past its allowance makes the process unhealthy until it recovers."""

from __future__ import annotations

import asyncio

import pytest

from xdm.supervision import TASK_FAILURES, Backoff, Supervisor, TaskReturned

FAST = Backoff(first_s=0.01, max_s=0.05)


def _failures(name: str) -> float:
    return TASK_FAILURES.labels(name)._value.get()


async def _until(condition, timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.01)


def test_backoff_doubles_from_first_to_max():
    backoff = Backoff(first_s=0.1, max_s=1.0)
    assert [backoff.delay_s(n) for n in range(1, 7)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_a_failing_task_is_restarted_counted_and_goes_on_working():
    async def scenario() -> None:
        supervisor = Supervisor(unhealthy_after_s=10, backoff=FAST)
        runs, done = [], asyncio.Event()

        async def flaky() -> None:
            runs.append(1)
            if len(runs) <= 3:
                raise OSError(f"store unreadable ({len(runs)})")
            task.progressed()
            done.set()
            await asyncio.Event().wait()  # a healthy loop runs until stopped

        before = _failures("unit-flaky")
        task = supervisor.start("unit-flaky", flaky)
        await asyncio.wait_for(done.wait(), 5)
        assert len(runs) == 4 and task.failures == 3 and not task.failing
        assert isinstance(task.last_error, OSError) and "(3)" in str(task.last_error)
        assert _failures("unit-flaky") - before == 3
        assert supervisor.healthy
        await task.stop()

    asyncio.run(scenario())


def test_a_task_that_returns_counts_as_a_failure_and_is_restarted():
    async def scenario() -> None:
        supervisor = Supervisor(backoff=FAST)
        runs = []

        async def returns() -> None:
            runs.append(1)

        task = supervisor.start("unit-returns", returns)
        await _until(lambda: len(runs) >= 3)
        assert isinstance(task.last_error, TaskReturned)
        await task.stop()

    asyncio.run(scenario())


def test_health_turns_bad_after_the_allowance_and_back_on_recovery():
    async def scenario() -> None:
        supervisor = Supervisor(unhealthy_after_s=0.2, backoff=FAST)
        changes: list[bool] = []
        supervisor.on_health_change(changes.append)
        broken = asyncio.Event()
        broken.set()

        async def loop() -> None:
            while True:
                if broken.is_set():
                    raise ConnectionError("model store gone")
                task.progressed()
                await asyncio.sleep(0.01)

        async def steady() -> None:
            await asyncio.Event().wait()

        task = supervisor.start("unit-broken", loop)
        supervisor.start("unit-steady", steady)
        await asyncio.sleep(0.1)
        assert supervisor.healthy and task.failing  # failing, but within its allowance
        await _until(lambda: not supervisor.healthy)
        assert changes == [False] and supervisor.unhealthy_tasks() == ["unit-broken"]
        broken.clear()
        await _until(lambda: supervisor.healthy)
        assert changes == [False, True] and not task.failing
        for name in list(supervisor.tasks):
            await supervisor.tasks[name].stop()

    asyncio.run(scenario())


def test_a_short_failure_never_turns_health_bad():
    async def scenario() -> None:
        supervisor = Supervisor(unhealthy_after_s=0.3, backoff=FAST)
        changes: list[bool] = []
        supervisor.on_health_change(changes.append)
        runs = []

        async def once_bad() -> None:
            runs.append(1)
            if len(runs) == 1:
                raise ValueError("one bad moment")
            while True:
                task.progressed()
                await asyncio.sleep(0.01)

        task = supervisor.start("unit-once", once_bad)
        await asyncio.sleep(0.6)  # past the allowance: its timer was cancelled by the recovery
        assert changes == [] and supervisor.healthy and task.failures == 1
        await task.stop()

    asyncio.run(scenario())


def test_stop_ends_a_task_waiting_out_its_backoff_and_forgets_its_health():
    async def scenario() -> None:
        supervisor = Supervisor(unhealthy_after_s=0.05, backoff=Backoff(first_s=60, max_s=60))

        async def fails() -> None:
            raise RuntimeError("always")

        task = supervisor.start("unit-stop", fails)
        await _until(lambda: not supervisor.healthy)
        await asyncio.wait_for(task.stop(), 1)  # not after its 60 s backoff
        assert supervisor.healthy and "unit-stop" not in supervisor.tasks

    asyncio.run(scenario())


def test_task_names_are_unique_and_the_allowance_positive():
    async def scenario() -> None:
        supervisor = Supervisor()
        task = supervisor.start("unit-once-only", asyncio.Event().wait)
        with pytest.raises(ValueError, match="already supervised"):
            supervisor.start("unit-once-only", asyncio.Event().wait)
        await task.stop()

    asyncio.run(scenario())
    with pytest.raises(ValueError, match="above 0"):
        Supervisor(unhealthy_after_s=0)


def test_a_batch_runner_that_fails_answers_its_callers_at_once_and_is_restarted():
    """A runner that died left every later Recall waiting on a queue nobody read."""
    from serving.batcher import MicroBatcher

    async def scenario() -> None:
        micro = MicroBatcher(search=None, max_batch=32, runners=1)
        calls = []

        async def answer(jobs) -> None:  # the runner's own work, failing once outside any per-batch handling
            calls.append(len(jobs))
            if len(calls) == 1:
                raise RuntimeError("runner bug")
            for job in jobs:
                job.future.set_result([("a", 1.0)])

        micro._answer = answer
        micro.start(Supervisor(backoff=FAST))
        with pytest.raises(RuntimeError, match="runner bug"):
            await asyncio.wait_for(micro.recall(None, None, 1), 2)
        assert await asyncio.wait_for(micro.recall(None, None, 1), 2) == [("a", 1.0)]
        assert micro._tasks[0].failures == 1
        await micro.stop()

    asyncio.run(scenario())
