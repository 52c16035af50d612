"""`xdm up`: the whole stack on one machine, fed by the simulator (or a given log), ending in a Recall.

It lives with replay, not infra: it drives the simulator, the producer and a Recall client on top of the
processes infra starts (`start_system` is also how the A/B replays start theirs)."""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from infra.processes import ensure_alive, wait_until
from infra.stack import Stack, start_services
from learner.model_store import read_latest
from replay.producer import ProduceReport, produce_log
from replay.simulate import simulate
from serving.arms import Arms
from serving.client import recall
from xdm.config import Config
from xdm.log import send_library_logs_to
from xdm.log_format import read_events
from xdm.v1 import recall_pb2

log = logging.getLogger(__name__)
DEMO_K = 10  # items in the Recall answer `xdm up` shows


@dataclass
class UpResult:
    stack: Stack
    produced: ProduceReport
    user_id: str
    answer: recall_pb2.RecallResponse


def busiest_user(log_dir: Path) -> str:
    """The user with the most clicks in the log: a user whose windows certainly hold history."""
    clicks = Counter(e.user_id for e in read_events(log_dir) if e.kind == "click")
    if not clicks:
        raise ValueError(f"the log in {log_dir} has no clicks")
    return clicks.most_common(1)[0][0]


def bring_up(base: Config, profile: str, root: Path, log_dir: Path | None = None, arms: str = "xdm:100",
             workers: int = 1, progress: bool = True, model_timeout_s: float = 600.0,
             quiet_libraries: bool = False, milvus: str = "lite") -> UpResult:
    """Start everything, replay the log, wait for a published model, ask Recall; the caller stops the stack.

    milvus: which Milvus the stack starts (infra.stack.MILVUS_KINDS).

    quiet_libraries (`xdm up`): this process logs to logs/up.log beside the services' logs as well, and
    its libraries' warnings go there only, so the console shows progress and the answer."""
    stack = start_services(root, base, profile, arms, milvus)
    if quiet_libraries:  # after start_services, which wipes root
        send_library_logs_to(up_log(stack))
    try:
        return _run(stack, log_dir, workers, progress, model_timeout_s)
    except BaseException:
        stack.stop()
        raise


def up_log(stack: Stack) -> Path:
    """The log file of the `xdm up` process itself."""
    return stack.root / "logs" / "up.log"


def start_system(stack: Stack, workers: int = 1) -> None:
    """Workers, one learner per arm (the arm's name is its variant when it names one) and the server."""
    for i in range(workers):
        stack.start_worker(f"worker-{i}")
    for arm in Arms.parse(stack.cfg.serving.arms).learners:
        stack.start_learner(arm, arm if arm in _variants() else stack.cfg.learner.variant)
    stack.start_server()


def _run(stack: Stack, log_dir: Path | None, workers: int, progress: bool, model_timeout_s: float) -> UpResult:
    cfg = stack.cfg
    if log_dir is None:
        log_dir = stack.root / "log"
        simulate(cfg.sim.users, cfg.sim.items, cfg.sim.days, cfg.sim.seed, log_dir, progress=progress)
    start_system(stack, workers)
    parsed = Arms.parse(cfg.serving.arms)
    produced = produce_log(cfg.kafka, log_dir, speed=cfg.sim.speed, progress=progress)
    for arm in parsed.learners:
        wait_until(lambda a=arm: _published(stack, a), model_timeout_s, f"first model version of arm {arm}",
                   interval_s=1.0)
    user = busiest_user(log_dir)
    answer = _recall_with_history(stack, user)
    return UpResult(stack=stack, produced=produced, user_id=user, answer=answer)


def _published(stack: Stack, arm: str) -> bool:
    """A version exists that can fill a DEMO_K answer (the very first publish may know few items)."""
    for proc in stack.processes:
        ensure_alive(proc)
    info = read_latest(stack.cfg.learner.model_store, arm)
    return info is not None and info.items >= DEMO_K


def _recall_with_history(stack: Stack, user: str, timeout_s: float = 120.0) -> recall_pb2.RecallResponse:
    """Ask until the server has both a model and the user's windows (it is reading the changelog)."""
    address = f"127.0.0.1:{stack.cfg.serving.port}"
    deadline = time.monotonic() + timeout_s
    while True:
        answer = recall(stack.cfg, address, user, k=DEMO_K)
        if not answer.fallback or time.monotonic() > deadline:
            return answer
        time.sleep(1.0)


def _variants() -> set[str]:
    from learner.model import VARIANTS

    return set(VARIANTS)
