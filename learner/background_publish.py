"""Publishing beside training: one publish at a time on its own thread, under a deadline.

A publish talks to Milvus, the model store and the broker; any of them can be slow or stop answering.
The training thread only takes a snapshot (learner/publish.py) and starts a thread, then looks at the
attempt between batches: training never waits on Milvus. An attempt still running at its deadline is
abandoned: it is told to stop before anything points at its version (LATEST, alias, announcement), its
number is never used again, and the next publish point starts a new attempt under a higher number. Its
thread ends by itself, since every Milvus call it makes carries milvus.call_timeout_s. Each failure and
abandonment is logged and counted (xdm_learner_publish_failures_total{reason}); none is silent.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from learner import instruments as m
from learner.model_store import VersionInfo
from learner.publish import Publisher, Snapshot, take_snapshot
from learner.trainer import Trainer
from xdm.errors import XdmError

log = logging.getLogger(__name__)


class PublishAbandoned(XdmError):
    """An attempt reached the point of making its version visible after the learner had given up on it."""


@dataclass
class Attempt:
    """One publish on its own thread. `lock` orders the one decision two threads make: the attempt going
    visible (committed) or the learner abandoning it, whichever comes first."""

    snapshot: Snapshot
    started: float  # time.monotonic()
    deadline: float  # time.monotonic() past which it is abandoned unless committed
    lock: threading.Lock = field(default_factory=threading.Lock)
    done: threading.Event = field(default_factory=threading.Event)
    version: int | None = None  # the number it took, once it took one
    committed: bool = False
    abandoned: bool = False
    info: VersionInfo | None = None
    error: BaseException | None = None


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended: `info` when its version was announced, else None (logged and counted)."""

    info: VersionInfo | None
    steps: int  # trainer steps its snapshot included


@dataclass
class PublishSchedule:
    """When a publish is due: some step is in no published version, and publish_every_steps steps or
    publish_every_s seconds passed since the last attempt. Counted from attempts, not successes, so a
    failing Milvus is tried once a publish point, not on every poll."""

    every_steps: int
    every_s: float
    published_steps: int = 0  # trainer steps the newest published version includes
    attempt_steps: int = 0
    attempt_at: float = field(default_factory=time.monotonic)

    def restart(self, steps: int) -> None:
        """A loop starts (or resumes) at `steps`: count from here."""
        self.published_steps = self.attempt_steps = steps
        self.attempt_at = time.monotonic()

    def due(self, steps: int) -> bool:
        if steps <= self.published_steps:
            return False
        return steps - self.attempt_steps >= self.every_steps or time.monotonic() - self.attempt_at >= self.every_s

    def attempted(self, steps: int) -> None:
        self.attempt_steps, self.attempt_at = steps, time.monotonic()


class BackgroundPublisher:
    """Runs a Publisher's publishes on threads, at most one that may still announce at a time."""

    def __init__(self, publisher: Publisher, deadline_s: float) -> None:
        if deadline_s <= 0:
            raise ValueError(f"learner.publish_deadline_s must be > 0, got {deadline_s}")
        self.publisher = publisher
        self.deadline_s = deadline_s
        self._attempt: Attempt | None = None
        self._numbers = threading.Lock()
        self._floor = 1  # lowest number this process may still use; above every number its attempts took

    @property
    def busy(self) -> bool:
        return self._attempt is not None

    def start(self, trainer: Trainer, after_version: int) -> None:
        """Snapshot the trainer here, publish on a thread under a number above `after_version` (the
        learner's newest version, from its checkpoint when it resumed) and above every trace of others."""
        if self._attempt is not None:
            raise RuntimeError("a publish is already in flight; poll() it first")
        with self._numbers:
            self._floor = max(self._floor, after_version + 1)
        now = time.monotonic()
        attempt = Attempt(snapshot=take_snapshot(trainer), started=now, deadline=now + self.deadline_s)
        self._attempt = attempt
        threading.Thread(target=self._run, args=(attempt,), name=f"publish-{self.publisher.arm}", daemon=True).start()

    def poll(self) -> Outcome | None:
        """The outcome of the attempt if it ended (or was abandoned just now), else None. Never blocks."""
        attempt = self._attempt
        if attempt is None:
            return None
        if attempt.done.is_set() or (time.monotonic() >= attempt.deadline and self._abandon(attempt)):
            return self._finish(attempt)
        return None

    def wait(self) -> Outcome | None:
        """Block until the attempt ends or is abandoned at its deadline (shutdown, tests). An attempt
        already past the point of no return gets one more deadline to announce, then is left to its thread."""
        attempt = self._attempt
        if attempt is None:
            return None
        attempt.done.wait(max(0.0, attempt.deadline - time.monotonic()))
        if not attempt.done.is_set() and not self._abandon(attempt):
            attempt.done.wait(self.deadline_s)
        if not attempt.done.is_set() and not attempt.abandoned:
            log.error("publish still announcing after two deadlines; leaving it to its thread",
                      extra={"arm": self.publisher.arm, "version": attempt.version})
            self._attempt = None
            return None
        return self._finish(attempt)

    # --- the attempt's thread

    def _run(self, attempt: Attempt) -> None:
        try:
            attempt.version = self._take_number()
            attempt.info = self.publisher.publish_snapshot(attempt.snapshot, attempt.version,
                                                           lambda: self._commit(attempt))
        except BaseException as exc:  # reported by poll() on the training thread
            attempt.error = exc
        finally:
            attempt.done.set()
        if attempt.abandoned:
            log.info("an abandoned publish ended", extra={"arm": self.publisher.arm, "version": attempt.version,
                                                          "error": repr(attempt.error)})

    def _take_number(self) -> int:
        with self._numbers:
            floor = self._floor
        version = self.publisher.next_version(floor)  # Milvus and the store: outside the lock
        with self._numbers:
            version = max(version, self._floor)  # an attempt abandoned meanwhile may have taken numbers
            self._floor = version + 1  # taken for good, whatever this attempt comes to
        return version

    def _commit(self, attempt: Attempt) -> None:
        with attempt.lock:
            if attempt.abandoned:
                raise PublishAbandoned(f"version {attempt.version} was abandoned at its deadline; not announced")
            attempt.committed = True

    # --- the training thread

    def _abandon(self, attempt: Attempt) -> bool:
        """Abandon the attempt unless it is already making its version visible; True when abandoned."""
        with attempt.lock:
            if not attempt.committed:
                attempt.abandoned = True
            return attempt.abandoned

    def _finish(self, attempt: Attempt) -> Outcome:
        self._attempt = None
        arm = self.publisher.arm
        seconds = round(time.monotonic() - attempt.started, 3)
        if attempt.abandoned:
            m.PUBLISH_FAILURES.labels(arm, "deadline").inc()
            log.error("publish abandoned at its deadline: nothing announced, its number is not used again; "
                      "a new version is published at the next publish point",
                      extra={"arm": arm, "version": attempt.version, "deadline_s": self.deadline_s})
            return Outcome(None, attempt.snapshot.steps)
        if attempt.error is not None:
            m.PUBLISH_FAILURES.labels(arm, "error").inc()
            log.error("publish failed: nothing announced; a new version is published at the next publish point",
                      exc_info=attempt.error, extra={"arm": arm, "version": attempt.version, "seconds": seconds})
            return Outcome(None, attempt.snapshot.steps)
        m.PUBLISH_SECONDS.labels(arm).observe(seconds)
        return Outcome(attempt.info, attempt.snapshot.steps)
