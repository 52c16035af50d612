"""Traffic of a chaos run (bench/chaos.py): the paced event feed and the Recall callers, both recorded."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import grpc

from replay.producer import make_producer, produce_events
from serving.client import recall
from xdm.config import Config
from xdm.records import Event

CALL_TIMEOUT_S = 2.0  # a caller's deadline: a hung server costs each caller this per call
CALL_PAUSE_S = 0.05  # between one caller's calls: ~20 calls/s a caller, light next to the stack


class Clock:
    """Seconds since the run began; every time in a report is on this clock."""

    def __init__(self) -> None:
        self.zero = time.monotonic()

    def __call__(self) -> float:
        return time.monotonic() - self.zero

    def wall_ms(self, at: float) -> float:
        """Wall-clock ms of a moment on this clock (to compare with a publish's published_ms)."""
        return (time.time() - (self() - at)) * 1000


class Feed:
    """Produces a log's events in time order at a steady rate, from a thread, until stopped."""

    def __init__(self, cfg: Config, events: list[Event], rate: float) -> None:
        self.cfg, self.events, self.rate = cfg, events, rate
        self.sent = 0  # acknowledged by the broker (acks=all)
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="feed", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> int:
        """Stop and return how many events were sent; `error` says whether the feed failed first."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=60)
        return self.sent

    @property
    def exhausted(self) -> bool:
        return self.sent >= len(self.events)

    def _run(self) -> None:
        producer = make_producer(self.cfg.kafka)
        started = time.monotonic()
        try:
            while not self._stop.is_set() and not self.exhausted:
                due = min(int((time.monotonic() - started) * self.rate), len(self.events))
                if due > self.sent:
                    self.sent += produce_events(producer, self.cfg.kafka, self.events[self.sent:due], progress=False)
                self._stop.wait(0.05)
        except BaseException as exc:  # the run reports it: only acknowledged events are checked
            self.error = exc
        finally:
            producer.close(timeout=10)


@dataclass(frozen=True)
class Call:
    at: float  # start, on the run's clock
    user: str
    seconds: float
    code: str  # "OK", a gRPC status name, or the type of a client-side error
    fallback: bool
    version: int


class Callers:
    """Threads calling Recall back to back through serving.client.recall, a fresh channel a call, so a
    restarted server is reached at once (no reconnect backoff of a long-lived channel in the figures)."""

    def __init__(self, cfg: Config, users: list[str], n: int, clock: Clock) -> None:
        self.cfg, self.clock = cfg, clock
        self.users = users  # replaced as a whole while the callers run
        self.address = f"127.0.0.1:{cfg.serving.port}"
        self.calls: list[Call] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), name=f"caller-{i}", daemon=True)
                         for i in range(n)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout=CALL_TIMEOUT_S + 10)

    def answered_by_model_since(self, at: float) -> bool:
        return any(c.at >= at and c.code == "OK" and not c.fallback for c in reversed(self.calls[-500:]))

    def _run(self, offset: int) -> None:
        i = offset
        while not self._stop.is_set():
            users = self.users
            user = users[i % len(users)]
            i += len(self._threads)
            started = self.clock()
            try:
                answer = recall(self.cfg, self.address, user, k=10, timeout_s=CALL_TIMEOUT_S)
                call = Call(started, user, self.clock() - started, "OK", answer.fallback, answer.model_version)
            except grpc.RpcError as exc:
                call = Call(started, user, self.clock() - started, exc.code().name, False, 0)
            except Exception as exc:  # counted as a failure, never ends the caller
                call = Call(started, user, self.clock() - started, type(exc).__name__, False, 0)
            self.calls.append(call)  # list.append is atomic under the GIL
            self._stop.wait(CALL_PAUSE_S)
