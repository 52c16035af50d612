"""A replay experiment end to end on the embedded stack: start the system with one learner per arm,
replay the log with scoring, write the report, stop everything."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from infra.learner_settings import LearnerSettings, parse_learner_settings, record
from replay.learner_gate import LearnerGate
from replay.replayer import ReplayOptions, ReplayProgress, Replayer, check_log
from replay.report import build_report
from xdm.config import Config


@dataclass
class ReplayRun:
    progress: ReplayProgress
    report: dict
    out_dir: Path


def replay_embedded(cfg: Config, profile: str, log_dir: Path, out_dir: Path, arms: str, opts: ReplayOptions,
                    workers: int = 1, progress_bar: bool = True, limit_events: int | None = None,
                    learner_sets: tuple[str, ...] = ()) -> ReplayRun:
    """learner_sets: `ARM:learner.FIELD=VALUE` items for one arm's learner (infra/learner_settings.py)."""
    from infra.stack import start_services
    from infra.up import start_system

    check_log(log_dir)
    settings = _learner_settings(cfg, arms, learner_sets)
    stack = start_services(out_dir / "stack", cfg, profile, arms)
    stack.learner_settings = settings
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        record(out_dir, settings)
        gate = _gate(stack, arms, workers, opts.max_learner_lag)
        start_system(stack, workers)
        replayer = Replayer(stack.cfg, log_dir, out_dir, f"127.0.0.1:{stack.cfg.serving.port}", opts, gate)
        done = replayer.run(progress_bar, limit_events)
    finally:
        stack.stop()
    return ReplayRun(progress=done, report=build_report(out_dir), out_dir=out_dir)


def closed_loop_embedded(cfg: Config, profile: str, out_dir: Path, arms: str, opts, workers: int = 1,
                         progress_bar: bool = True, learner_sets: tuple[str, ...] = ()) -> dict:
    """The closed-loop A/B on a fresh embedded stack (one learner per arm); returns its report."""
    from infra.stack import start_services
    from infra.up import start_system
    from replay.closed_loop import run_closed_loop

    settings = _learner_settings(cfg, arms, learner_sets)
    stack = start_services(out_dir / "stack", cfg, profile, arms)
    stack.learner_settings = settings
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        record(out_dir, settings)
        gate = _gate(stack, arms, workers, opts.max_learner_lag)
        start_system(stack, workers)
        return run_closed_loop(stack.cfg, out_dir, opts, f"127.0.0.1:{stack.cfg.serving.port}", progress_bar, gate)
    finally:
        stack.stop()


def _learner_settings(cfg: Config, arms: str, items: tuple[str, ...]) -> LearnerSettings:
    from serving.arms import Arms

    return parse_learner_settings(items, Arms.parse(arms).learners, cfg)


def _gate(stack, arms: str, workers: int, max_lag: int) -> LearnerGate:
    """Give every worker and learner a metrics port (set before they start) and watch them."""
    from infra.processes import free_port
    from serving.arms import Arms

    worker_names = [f"worker-{i}" for i in range(workers)]
    learners = Arms.parse(arms).learners
    for name in worker_names + [f"learner-{arm}" for arm in learners]:
        stack.metrics_ports[name] = free_port()
    return LearnerGate([stack.metrics_url(n) for n in worker_names],
                       {arm: stack.metrics_url(f"learner-{arm}") for arm in learners}, max_lag)
