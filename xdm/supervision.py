"""Background tasks that never die silently: each runs under a Supervisor that restarts it.

A server or worker runs long-lived loops beside its main work (the windows replica, hot reload of model
versions, popular items, batch runners, the catalogue mirrors). An exception that escaped such a loop
used to end it for good while the process went on answering with data that no longer moved. Under a
`Supervisor` every failure of a task

- is counted in `xdm_background_task_failures_total{task}` and logged with its traceback,
- restarts the task after an exponential backoff, capped so that a task failing for a long time is still
  retried often, and starting small so that one bad moment costs little,
- and a task whose failures have gone on for `unhealthy_after_s` makes the process unhealthy (the
  server reports NOT_SERVING) until it recovers.

A task says it has recovered by calling `progressed()` after a unit of work done (a fetch applied, a
batch answered): the supervisor cannot tell a restarted loop that works from one about to fail again.
A task that returns counts as a failure too: these loops are meant to run until stopped.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Awaitable, Callable

from prometheus_client import Counter, Gauge

log = logging.getLogger(__name__)
TASK_FAILURES = Counter("xdm_background_task_failures", "Failures of a background task (each one is restarted)",
                        ["task"])
TASK_HEALTHY = Gauge("xdm_background_task_healthy",
                     "1 unless the task has been failing for longer than its supervisor allows", ["task"])
DEFAULT_UNHEALTHY_AFTER_S = 30.0  # for processes without a health endpoint of their own (the stream worker)


class TaskReturned(RuntimeError):
    """A supervised loop returned: it is meant to run until it is stopped."""


@dataclass(frozen=True)
class Backoff:
    """Delay before a restart: first_s after the first failure in a row, doubling up to max_s."""

    first_s: float = 0.1
    max_s: float = 5.0

    def delay_s(self, failures_in_a_row: int) -> float:
        return min(self.max_s, self.first_s * 2 ** max(0, failures_in_a_row - 1))


class Supervisor:
    """The supervised background tasks of one process and their joint health."""

    def __init__(self, unhealthy_after_s: float = DEFAULT_UNHEALTHY_AFTER_S, backoff: Backoff = Backoff()) -> None:
        if unhealthy_after_s <= 0:
            raise ValueError(f"unhealthy_after_s is {unhealthy_after_s}; it must be above 0 s")
        self.unhealthy_after_s = unhealthy_after_s
        self.backoff = backoff
        self.tasks: dict[str, SupervisedTask] = {}
        self._listeners: list[Callable[[bool], None]] = []
        self._healthy = True

    def start(self, name: str, run: Callable[[], Awaitable[None]]) -> SupervisedTask:
        """Run `run()` as the task `name` (a metric label: keep names few and fixed), restarted on failure."""
        if name in self.tasks:
            raise ValueError(f"a task named {name!r} is already supervised; give each task its own name")
        task = SupervisedTask(name, run, self)
        self.tasks[name] = task
        task._start()
        return task

    @property
    def healthy(self) -> bool:
        return not self.unhealthy_tasks()

    def unhealthy_tasks(self) -> list[str]:
        return sorted(name for name, task in self.tasks.items() if not task.healthy)

    def on_health_change(self, listener: Callable[[bool], None]) -> None:
        """Call listener(healthy) whenever the joint health flips (on the event loop)."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        healthy = self.healthy
        if healthy == self._healthy:
            return
        self._healthy = healthy
        if healthy:
            log.info("every background task has recovered")
        else:
            log.error("background tasks failing for over %.0f s: %s", self.unhealthy_after_s,
                      ", ".join(self.unhealthy_tasks()))
        for listener in self._listeners:
            listener(healthy)

    def _forget(self, task: SupervisedTask) -> None:
        if self.tasks.get(task.name) is task:
            del self.tasks[task.name]
        self._changed()


class SupervisedTask:
    """One named background coroutine and its failure record; made by `Supervisor.start`."""

    def __init__(self, name: str, run: Callable[[], Awaitable[None]], supervisor: Supervisor) -> None:
        self.name = name
        self.failures = 0  # since start
        self.last_error: BaseException | None = None
        self._run = run
        self._supervisor = supervisor
        self._in_a_row = 0
        self._overdue = False  # failing for longer than the supervisor allows
        self._overdue_timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task | None = None

    @property
    def healthy(self) -> bool:
        return not self._overdue

    @property
    def failing(self) -> bool:
        """In a run of failures not yet ended by progress (healthy until it lasts too long)."""
        return self._in_a_row > 0

    def progressed(self) -> None:
        """The task did a unit of work: a run of failures, if any, is over."""
        if self._in_a_row == 0:
            return
        self._in_a_row = 0
        self._cancel_timer()
        if self._overdue:
            self._overdue = False
            TASK_HEALTHY.labels(self.name).set(1)
            log.info("background task %s recovered", self.name)
            self._supervisor._changed()

    async def stop(self) -> None:
        self._cancel_timer()
        self._supervisor._forget(self)
        if self._task is None:
            return
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass

    def _start(self) -> None:
        TASK_FAILURES.labels(self.name)  # the series exists at 0 before the first failure
        TASK_HEALTHY.labels(self.name).set(1)
        self._task = asyncio.create_task(self._loop(), name=self.name)

    async def _loop(self) -> None:
        while True:
            try:
                await self._run()
                error: Exception = TaskReturned(f"background task {self.name} returned")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the point of supervision: any failure is counted and restarted
                error = exc
            self._failed(error)
            await asyncio.sleep(self._supervisor.backoff.delay_s(self._in_a_row))

    def _failed(self, error: Exception) -> None:
        self.failures += 1
        self._in_a_row += 1
        self.last_error = error
        TASK_FAILURES.labels(self.name).inc()
        delay = self._supervisor.backoff.delay_s(self._in_a_row)
        log.error("background task %s failed (%d in a row), restarting in %.1f s: %s", self.name, self._in_a_row,
                  delay, error, exc_info=error)
        if self._in_a_row == 1:
            self._overdue_timer = asyncio.get_running_loop().call_later(self._supervisor.unhealthy_after_s,
                                                                        self._became_overdue)

    def _became_overdue(self) -> None:
        self._overdue_timer = None
        self._overdue = True
        TASK_HEALTHY.labels(self.name).set(0)
        self._supervisor._changed()

    def _cancel_timer(self) -> None:
        if self._overdue_timer is not None:
            self._overdue_timer.cancel()
            self._overdue_timer = None
