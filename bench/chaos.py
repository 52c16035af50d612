"""Fault injection, measured: the whole stack under kills and stops, then its invariants checked.

The embedded stack (infra/stack.py: tansu, Milvus Lite, stream workers, one learner, one Recall server
with its compute child) is fed a simulated log at a steady rate, and Recall callers run throughout
(bench/chaos_traffic.py). Once the first model answers, a driver injects faults one at a time at random
moments drawn from a seeded RNG (bench/chaos_faults.py): SIGKILL or SIGSTOP of a stream worker, the
learner, the Recall server, its compute child or Milvus; a killed process is started again as it was, a
stopped one resumed; each fault's outage lasts until what it broke works again. The broker itself is
never faulted: it keeps topics in memory only, and losing it is a failure the system must report, not
survive. Then the feed stops and the invariants are checked (bench/chaos_checks.py): the windows equal
the pure rules over the events fed, every sample the rules complete was emitted and trained on exactly
once, versions strictly increase with each kept tower matching its vectors. The report (bench/
chaos_report.py) gives failed Recall calls per fault and recovery times (p50/p99) as a table, JSON and a
plot in --out. The `test` profile runs (small model, checkpoints and publishes every 5 steps) so versions
turn over quickly. Exit status 1 when an invariant is violated or a fault did not recover.

    .venv/bin/python bench/chaos.py --duration-s 600 --seed 1 [--faults worker,learner,server,compute,milvus]
        [--modes kill,stop] [--max-faults N] [--rate 200] [--out bench/results/chaos]
"""

from __future__ import annotations

import argparse
import logging
import random
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.chaos_checks import check_samples, check_versions, check_windows  # noqa: E402
from bench.chaos_faults import KINDS, MODES, Fault, FaultPlan, Injector, Timing  # noqa: E402
from bench.chaos_report import build_report, print_report, write  # noqa: E402
from bench.chaos_traffic import Callers, Clock, Feed  # noqa: E402
from infra.processes import free_port  # noqa: E402
from infra.stack import Stack, start_services  # noqa: E402
from replay.bring_up import start_system  # noqa: E402
from replay.producer import make_producer, produce_catalogue  # noqa: E402
from replay.simulate import simulate  # noqa: E402
from stream.expected import expected_run  # noqa: E402
from xdm.config import load_config  # noqa: E402
from xdm.log_format import read_events, read_items  # noqa: E402
from xdm.records import Event  # noqa: E402

ARM = "xdm"
RESULTS = ROOT / "bench" / "results" / "chaos"
# Short group sessions: a killed worker leaves its group in seconds, not the profile's 6 s + rebalance.
FAST_GROUP = {"kafka.session_timeout_ms": 4000, "kafka.heartbeat_ms": 1000, "kafka.rebalance_timeout_ms": 6000}
SETTLE_MARGIN_S = 5.0  # callers ask only users whose first click was fed at least this long before


@dataclass(frozen=True)
class ChaosSettings:
    duration_s: float = 600.0  # faults are injected for this long, after the warm-up
    seed: int = 1  # the fault schedule (order, targets, gaps, holds) and the simulated world
    faults: tuple[str, ...] = KINDS
    modes: tuple[str, ...] = MODES
    max_faults: int = 0  # stop injecting after this many faults (0: only the duration bounds them)
    rate: float = 200.0  # events fed per second
    workers: int = 2
    callers: int = 4
    gap_s: tuple[float, float] = (2.0, 6.0)  # quiet time between one fault's recovery and the next fault
    hold_s: tuple[float, float] = (2.0, 8.0)  # how long a SIGSTOP lasts
    restart_delay_s: tuple[float, float] = (0.0, 2.0)  # from a SIGKILL to the restart
    recover_timeout_s: float = 120.0  # a fault not recovered by then is reported, and the run stops injecting
    warmup_timeout_s: float = 240.0  # until the first version answers Recall
    settle_timeout_s: float = 180.0  # for the windows and the learner to catch up after the feed stops
    users: int = 1000  # the simulated world; 1000 users x 2 days is ~244 k events, 20 min at 200 events/s
    items: int = 600
    days: int = 2


def run_chaos(settings: ChaosSettings, root: Path, progress: Callable[[str], None] = print) -> dict:
    """Start the stack under root, inject the faults, check the invariants; returns the report."""
    rng = random.Random(settings.seed)
    log_dir = root / "log"
    simulate(settings.users, settings.items, settings.days, settings.seed, log_dir, progress=False)
    events, items = list(read_events(log_dir)), read_items(log_dir)
    base = load_config("test", env={}, overrides={**FAST_GROUP, "learner.record_trained_ids": True})
    stack = start_services(root / "stack", base, "test")
    clock = Clock()
    feed = Feed(stack.cfg, events, settings.rate)
    early = events[: int(settings.rate * 30)]  # whom to ask until the warm-up finds users with clicks
    callers = Callers(stack.cfg, _clicked_users(early) or sorted({e.user_id for e in early}), settings.callers, clock)
    try:
        workers = _start(stack, settings, log_dir, progress)
        feed.start()
        callers.start()
        callers.users = _warm_up(stack, callers, feed, settings)
        injector = Injector(stack, Timing(settings.hold_s, settings.restart_delay_s, settings.recover_timeout_s),
                            rng, clock, callers, workers, ARM)
        chaos_from = clock()
        progress(f"[{chaos_from:6.1f} s] the first version answers; injecting faults for {settings.duration_s:.0f} s")
        faults = _inject(settings, injector, FaultPlan(rng, settings.faults, settings.modes), clock, feed, progress)
        span = (chaos_from, clock())
        fed = feed.stop()
        if feed.error is not None:
            raise RuntimeError(f"the feed failed after {fed} events: {feed.error!r}")
        progress(f"[{clock():6.1f} s] feed stopped after {fed:,} events; checking the invariants ...")
        want = expected_run(events[:fed], items, stack.cfg.windows, stack.cfg.samples)
        invariants = {"windows": check_windows(stack.cfg, want, settings.settle_timeout_s)}
        callers.stop()
        invariants["samples"] = check_samples(stack, ARM, want, settings.settle_timeout_s)
        invariants["versions"] = check_versions(stack.cfg, ARM)
        progress("  " + ", ".join(f"{name} {'ok' if r['ok'] else 'VIOLATED'}" for name, r in invariants.items()))
        return build_report(_settings_record(settings), faults, callers.calls, span, fed, invariants)
    finally:
        callers.stop()
        feed.stop()
        for proc in stack.processes:
            proc.resume()  # a stopped process would sit out its whole SIGTERM timeout
        stack.stop()


def _start(stack: Stack, settings: ChaosSettings, log_dir: Path, progress: Callable[[str], None]) -> list[str]:
    """The catalogue into the broker, then workers (with metrics: recovery reads them), learner, server."""
    workers = [f"worker-{i}" for i in range(settings.workers)]
    for name in [*workers, f"learner-{ARM}"]:
        stack.metrics_ports[name] = free_port()
    producer = make_producer(stack.cfg.kafka)
    try:
        produce_catalogue(producer, stack.cfg.kafka, log_dir)
    finally:
        producer.close(timeout=10)
    progress("starting workers, learner and server ...")
    start_system(stack, settings.workers)
    return workers


def _inject(settings: ChaosSettings, injector: Injector, plan: FaultPlan, clock: Clock, feed: Feed,
            progress: Callable[[str], None]) -> list[Fault]:
    """Faults one at a time until the duration (or max_faults) is spent; stops at one that does not recover."""
    rng, began = injector.rng, clock()
    faults: list[Fault] = []
    while not feed.exhausted and (not settings.max_faults or len(faults) < settings.max_faults):
        time.sleep(rng.uniform(*settings.gap_s))
        if clock() - began >= settings.duration_s:
            break
        faults.append(injector.run(*plan.next()))
        progress(_fault_line(faults[-1]))
        if faults[-1].recovered_at is None:
            break
    return faults


def _clicked_users(events: list[Event]) -> list[str]:
    return sorted({e.user_id for e in events if e.kind == "click"})


def _warm_up(stack: Stack, callers: Callers, feed: Feed, settings: ChaosSettings) -> list[str]:
    """Wait until the model answers Recall and enough users' clicks were fed a while ago; those users are
    whom the callers ask from then on, so that a fallback answer means a fault, not a user without clicks."""
    deadline = time.monotonic() + settings.warmup_timeout_s
    while True:
        users = _clicked_users(feed.events[: max(0, feed.sent - int(settings.rate * SETTLE_MARGIN_S))])
        if callers.answered_by_model_since(0.0) and len(users) >= settings.callers:
            return users
        for proc in stack.processes:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} died during the warm-up:\n{proc.log_tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no Recall answer from a model within {settings.warmup_timeout_s:.0f} s")
        time.sleep(1.0)


def _fault_line(f: Fault) -> str:
    outcome = f"recovered in {f.outage_s:5.1f} s" if f.outage_s is not None else f"NOT RECOVERED ({f.note})"
    return f"[{f.injected_at:6.1f} s] {f.mode:<4} {f.kind:<7} {f.target:<11} held {f.held_s:4.1f} s: {outcome}"


def _settings_record(settings: ChaosSettings) -> dict:
    return {**asdict(settings), "faults": list(settings.faults), "modes": list(settings.modes)}


def main() -> None:
    args = _args()
    # pymilvus logs every failed reconnect of its shared channel with a traceback while Milvus is down
    logging.getLogger("pymilvus").setLevel(logging.CRITICAL)
    settings = replace(ChaosSettings(), duration_s=args.duration_s, seed=args.seed, rate=args.rate,
                       workers=args.workers, callers=args.callers, max_faults=args.max_faults,
                       faults=_choices(args.faults, KINDS, "--faults"), modes=_choices(args.modes, MODES, "--modes"))
    root = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="xdm-chaos-"))
    started = time.monotonic()
    try:
        report = run_chaos(settings, root)
    finally:
        if not args.root:
            shutil.rmtree(root, ignore_errors=True)
    report["wall_s"] = round(time.monotonic() - started, 1)
    path = write(report, Path(args.out))
    print_report(report)
    print(f"wrote {path} and its plot ({report['wall_s']} s)")
    sys.exit(0 if report["ok"] else 1)


def _choices(text: str, known: tuple[str, ...], flag: str) -> tuple[str, ...]:
    picked = tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = [t for t in picked if t not in known]
    if unknown or not picked:
        sys.exit(f"{flag}: choose from {', '.join(known)} (got {text!r})")
    return picked


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration-s", type=float, default=600.0, help="how long faults are injected (s)")
    parser.add_argument("--seed", type=int, default=1, help="fault schedule and simulated world")
    parser.add_argument("--faults", default=",".join(KINDS), help="targets, comma-separated")
    parser.add_argument("--modes", default=",".join(MODES), help="kill (SIGKILL, restart), stop (SIGSTOP, SIGCONT)")
    parser.add_argument("--max-faults", type=int, default=0, help="stop after this many faults (0: no limit)")
    parser.add_argument("--rate", type=float, default=200.0, help="events fed per second")
    parser.add_argument("--workers", type=int, default=2, help="stream workers")
    parser.add_argument("--callers", type=int, default=4, help="Recall caller threads")
    parser.add_argument("--out", default=str(RESULTS), help="folder for the JSON report and its plot")
    parser.add_argument("--root", default="", help="keep the stack's files (logs, data) in this folder")
    return parser.parse_args()


if __name__ == "__main__":
    main()
