"""Faults of a chaos run (bench/chaos.py): which process gets which signal, and when it has recovered.

A killed process is started again as it was (infra.stack.Stack.restart: same data dir, ports, config),
except the server's compute child, which its server replaces; a stopped one gets SIGCONT after the hold.
Recovered means what the fault broke works again, checked after the restart or SIGCONT:
  worker           every event partition owned by a live worker, and events consumed again
  learner, milvus  a model version published after the restart or SIGCONT
  server, compute  a Recall call started after the restart or SIGCONT answered by the model (not fallback)
"""

from __future__ import annotations

import os
import random
import signal
import time
import urllib.request
from dataclasses import dataclass
from typing import Callable

from bench.chaos_traffic import Callers, Clock
from infra.processes import spawned_child
from infra.stack import Stack
from learner.model_store import read_latest

KINDS = ("worker", "learner", "server", "compute", "milvus")
MODES = ("kill", "stop")
PROBE_S = 0.25  # how often recovery is checked


@dataclass
class Fault:
    kind: str
    mode: str
    target: str  # process name, or the compute child's pid
    injected_at: float  # on the run's clock
    held_s: float  # SIGSTOP length, or SIGKILL-to-restart delay
    acted_at: float | None = None  # restart or SIGCONT done
    recovered_at: float | None = None
    failed_calls: int = 0  # Recall calls that failed during the outage
    degraded_calls: int = 0  # fallback answers during the outage
    note: str = ""

    @property
    def outage_s(self) -> float | None:
        return None if self.recovered_at is None else self.recovered_at - self.injected_at

    @property
    def after_action_s(self) -> float | None:
        return None if self.recovered_at is None or self.acted_at is None else self.recovered_at - self.acted_at


class FaultPlan:
    """Every (kind, mode) pair once in a shuffled order, then again in a new order, and so on: a short run
    still sees each fault."""

    def __init__(self, rng: random.Random, kinds: tuple[str, ...], modes: tuple[str, ...]) -> None:
        self.rng = rng
        self.pairs = [(k, m) for k in kinds for m in modes]
        self._queue: list[tuple[str, str]] = []

    def next(self) -> tuple[str, str]:
        if not self._queue:
            self._queue = self.rng.sample(self.pairs, len(self.pairs))
        return self._queue.pop(0)


@dataclass(frozen=True)
class Timing:
    hold_s: tuple[float, float]  # how long a SIGSTOP lasts (uniform)
    restart_delay_s: tuple[float, float]  # from a SIGKILL to the restart (uniform)
    recover_timeout_s: float  # a fault not recovered by then is reported as such


class Injector:
    """Injects one fault, undoes it (restart or SIGCONT) and waits until the system has recovered."""

    def __init__(self, stack: Stack, timing: Timing, rng: random.Random, clock: Clock, callers: Callers,
                 workers: list[str], arm: str) -> None:
        self.stack, self.timing, self.rng, self.clock = stack, timing, rng, clock
        self.callers, self.workers, self.arm = callers, workers, arm

    def run(self, kind: str, mode: str) -> Fault:
        held = self.rng.uniform(*(self.timing.hold_s if mode == "stop" else self.timing.restart_delay_s))
        target = self.rng.choice(self.workers) if kind == "worker" else {
            "learner": f"learner-{self.arm}", "server": "server", "milvus": "milvus"}.get(kind, "")
        fault = Fault(kind, mode, target, injected_at=self.clock(), held_s=round(held, 2))
        try:
            if kind == "compute":
                self._compute_fault(fault, held)
            else:
                self._process_fault(fault, held)
            fault.acted_at = self.clock()
            self._wait_recovered(fault)
        except Exception as exc:  # a restart that failed: reported, and the run stops injecting
            fault.note = _one_line(exc)
        return fault

    def _process_fault(self, fault: Fault, held: float) -> None:
        proc = self.stack.by_name(fault.target)
        if fault.mode == "kill":
            proc.kill()
            time.sleep(held)
            self.stack.restart(fault.target)
            return
        proc.pause()
        time.sleep(held)
        proc.resume()

    def _compute_fault(self, fault: Fault, held: float) -> None:
        pid = spawned_child(self.stack.by_name("server").pid)
        if pid is None:
            raise RuntimeError("the server has no compute child")
        fault.target = f"pid {pid}"
        if fault.mode == "kill":
            os.kill(pid, signal.SIGKILL)  # the server replaces it at its next batch
            return
        os.kill(pid, signal.SIGSTOP)
        time.sleep(held)
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            fault.note = "the server replaced the stopped child"

    def _wait_recovered(self, fault: Fault) -> None:
        recovered = self._probe(fault)
        deadline = time.monotonic() + self.timing.recover_timeout_s
        while time.monotonic() < deadline:
            if recovered():
                fault.recovered_at = self.clock()
                return
            time.sleep(PROBE_S)
        fault.note = fault.note or f"not recovered within {self.timing.recover_timeout_s:.0f} s"

    def _probe(self, fault: Fault) -> Callable[[], bool]:
        since = fault.acted_at or 0.0
        if fault.kind in ("server", "compute"):
            return lambda: self.callers.answered_by_model_since(since)
        if fault.kind in ("learner", "milvus"):
            since_ms = self.clock.wall_ms(since)
            return lambda: _published_since(self.stack, self.arm, since_ms)
        return StreamFlowing(self.stack, self.workers)


def _one_line(exc: Exception) -> str:
    """An error's first line and, when it carries a process's log tail, the line saying why the process
    ended (the CLI's `error: ...`), else the tail's last line naming an error."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    errors = ([line for line in lines[1:] if line.lower().startswith("error")]
              or [line for line in lines[1:] if "error" in line.lower()])
    return f"{type(exc).__name__}: {lines[0] if lines else ''}" + (f" ... {errors[-1]}" if errors else "")


def _published_since(stack: Stack, arm: str, since_ms: float) -> bool:
    try:
        info = read_latest(stack.cfg.learner.model_store, arm)
    except Exception:  # a LATEST the reader refuses: not recovered (yet)
        return False
    return info is not None and info.published_ms >= since_ms


class StreamFlowing:
    """True once every event partition is owned by a live worker and the group consumes events again."""

    def __init__(self, stack: Stack, workers: list[str]) -> None:
        self.stack, self.workers = stack, workers
        self.partitions = 2 * stack.cfg.kafka.partitions  # clicks and impressions
        self.consumed_when_owned: float | None = None

    def __call__(self) -> bool:
        metrics = [scrape(self.stack.metrics_url(w)) for w in self.workers]
        owned = sum(m.get("xdm_stream_assigned_partitions", 0) for m in metrics)
        consumed = sum(m.get("xdm_stream_events_total", 0) for m in metrics)
        if owned != self.partitions:
            self.consumed_when_owned = None
            return False
        if self.consumed_when_owned is None:
            self.consumed_when_owned = consumed
            return False
        return consumed > self.consumed_when_owned


def scrape(url: str) -> dict[str, float]:
    """A Prometheus endpoint's samples by name ({} when it does not answer: a stopped or dead process)."""
    try:
        text = urllib.request.urlopen(url, timeout=1).read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out
