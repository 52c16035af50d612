"""A replay experiment end to end on the embedded stack: start the system with one learner per arm,
replay the log with scoring, write the report, stop everything."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from infra.learner_settings import parse_learner_settings, record
from replay.learner_wait import LearnerWait
from replay.replayer import ReplayOptions, ReplayProgress, Replayer, check_log
from replay.report import build_report
from xdm.config import Config
from xdm.log import send_library_logs_to

if TYPE_CHECKING:
    from infra.stack import Stack


@dataclass
class ReplayRun:
    progress: ReplayProgress
    report: dict
    out_dir: Path


def replay_embedded(cfg: Config, profile: str, log_dir: Path, out_dir: Path, arms: str, opts: ReplayOptions,
                    workers: int = 1, progress_bar: bool = True, limit_events: int | None = None,
                    learner_sets: tuple[str, ...] = (), quiet_libraries: bool = False) -> ReplayRun:
    """learner_sets: `ARM:learner.FIELD=VALUE` items for one arm's learner (infra/learner_settings.py);
    quiet_libraries: a person watches (the CLI), so library chatter goes to the stack's logs only."""
    check_log(log_dir)
    stack, learners = _start(cfg, profile, out_dir, arms, workers, learner_sets, opts.max_learner_lag,
                             quiet_libraries)
    try:
        replayer = Replayer(stack.cfg, log_dir, out_dir, f"127.0.0.1:{stack.cfg.serving.port}", opts, learners)
        done = replayer.run(progress_bar, limit_events)
    finally:
        stack.stop()
    return ReplayRun(progress=done, report=build_report(out_dir), out_dir=out_dir)


def closed_loop_embedded(cfg: Config, profile: str, out_dir: Path, arms: str, opts, workers: int = 1,
                         progress_bar: bool = True, learner_sets: tuple[str, ...] = (),
                         quiet_libraries: bool = False) -> dict:
    """The closed-loop A/B on a fresh embedded stack (one learner per arm); returns its report."""
    from replay.closed_loop import run_closed_loop

    stack, learners = _start(cfg, profile, out_dir, arms, workers, learner_sets, opts.max_learner_lag,
                             quiet_libraries)
    try:
        return run_closed_loop(stack.cfg, out_dir, opts, f"127.0.0.1:{stack.cfg.serving.port}", learners,
                               progress_bar)
    finally:
        stack.stop()


def _start(cfg: Config, profile: str, out_dir: Path, arms: str, workers: int, learner_sets: tuple[str, ...],
           max_lag: int, quiet_libraries: bool) -> tuple[Stack, LearnerWait]:
    """A fresh stack with workers, one learner per arm (with its own settings, recorded in out_dir) and the
    server, every worker and learner exposing metrics for the returned learner wait."""
    from infra.processes import free_port
    from infra.stack import start_services
    from replay.bring_up import start_system
    from serving.arms import Arms

    learners = Arms.parse(arms).learners
    settings = parse_learner_settings(learner_sets, learners, cfg)  # a bad item fails before anything starts
    stack = start_services(out_dir / "stack", cfg, profile, arms)
    if quiet_libraries:  # after start_services, which wipes the stack's folder
        send_library_logs_to(experiment_log(stack))
    try:
        stack.learner_settings = settings
        out_dir.mkdir(parents=True, exist_ok=True)
        record(out_dir, settings)
        worker_names = [f"worker-{i}" for i in range(workers)]
        for name in worker_names + [f"learner-{arm}" for arm in learners]:
            stack.metrics_ports[name] = free_port()
        start_system(stack, workers)
    except BaseException:
        stack.stop()
        raise
    waits = LearnerWait([stack.metrics_url(n) for n in worker_names],
                        {arm: stack.metrics_url(f"learner-{arm}") for arm in learners}, max_lag)
    return stack, waits


def experiment_log(stack: Stack) -> Path:
    """The log file of the replay or closed-loop process itself, beside the services' logs."""
    return stack.root / "logs" / "experiment.log"
