"""Wait until every arm's learner has trained on what the stream has emitted so far.

An experiment that starts while one arm's learner is still working through the warm-up samples compares
a trained model with a half-trained one: the slower model (XDM's steps cost more than SDM's) would lose
for a reason a production deployment with enough trainers would not have. The workers' progress is
visible in the windows changelog; the learners' only in their version announcements, which carry
`trained_samples`. A learner with samples left trains a step within `learner.max_wait_ms` and announces
a version at least every `learner.publish_every_s` while it has new steps, so announcements that stop
changing for longer than that mean the learner has nothing left to train on. All arms share one samples
topic, so once idle they have trained on the same number of samples; a difference is logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer
from tqdm import tqdm

from learner.model_store import decode_announcement
from xdm.client_security import kafka_client_kwargs
from xdm.config import Config

log = logging.getLogger(__name__)
QUIET_MARGIN_S = 15.0  # beyond the learner's publish interval, for a step in progress and the announcement


@dataclass
class LearnerProgress:
    """The newest announcement of each learner, and whether they all went quiet in time."""

    trained_samples: dict[str, int] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    idle: bool = False
    waited_s: float = 0.0


def quiet_period_s(cfg: Config) -> float:
    lc = cfg.learner
    return lc.publish_every_s + lc.max_wait_ms / 1000 + QUIET_MARGIN_S


async def wait_learners_idle(cfg: Config, learners: tuple[str, ...], timeout_s: float,
                             quiet_s: float | None = None, show: bool = False) -> LearnerProgress:
    """Block until each learner has announced a version and none announced more samples for `quiet_s`."""
    quiet_s = quiet_period_s(cfg) if quiet_s is None else quiet_s
    consumer = AIOKafkaConsumer(cfg.kafka.versions_topic, **kafka_client_kwargs(cfg.kafka, "aiokafka"),
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    progress = LearnerProgress()
    started = time.monotonic()
    changed_at = started
    bar = tqdm(desc="learners: samples trained (slowest)", unit="sample", disable=not show)
    try:
        while True:
            now = time.monotonic()
            if set(learners) <= set(progress.trained_samples) and now - changed_at >= quiet_s:
                progress.idle = True
                break
            if now - started > timeout_s:
                break
            batches = await consumer.getmany(timeout_ms=1000)
            for records in batches.values():
                for record in records:
                    if _take(progress, record.value, learners):
                        changed_at = time.monotonic()
                        bar.n = min(progress.trained_samples.values())
                        bar.set_postfix(progress.trained_samples)
    finally:
        bar.close()
        await consumer.stop()
    progress.waited_s = time.monotonic() - started
    _log_outcome(progress, learners, timeout_s)
    return progress


def _take(progress: LearnerProgress, payload: bytes, learners: tuple[str, ...]) -> bool:
    """Record one announcement; True when it moved a learner's trained-sample count."""
    try:
        info = decode_announcement(payload)
    except Exception:  # not ours to judge here; the server logs bad announcements
        return False
    if info.arm not in learners or info.version <= progress.versions.get(info.arm, 0):
        return False
    progress.versions[info.arm] = info.version
    moved = progress.trained_samples.get(info.arm) != info.trained_samples
    progress.trained_samples[info.arm] = info.trained_samples
    return moved


def _log_outcome(progress: LearnerProgress, learners: tuple[str, ...], timeout_s: float) -> None:
    if not progress.idle:
        log.warning("learners still training after the wait; the experiment starts with them behind",
                    extra={"timeout_s": timeout_s, "trained_samples": progress.trained_samples,
                           "missing": [a for a in learners if a not in progress.trained_samples]})
        return
    counts = set(progress.trained_samples.values())
    if len(counts) > 1:
        log.warning("learners idle but trained on different sample counts",
                    extra={"trained_samples": progress.trained_samples})
        return
    log.info("learners caught up", extra={"trained_samples": progress.trained_samples,
                                          "waited_s": round(progress.waited_s, 1)})
