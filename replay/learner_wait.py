"""Waits for every arm's learner, so that an experiment compares models and not the machines they train on.

Without them a replay compares hardware as much as models: on a small machine the learner whose steps
cost more (XDM's, or any arm with more rehearsal steps) falls further behind the log as the replay goes,
and its arm is served by a model that has seen fewer samples. Measured: replaying the 6,000-user, 14-day
world on two cores with 4 rehearsal steps for XDM, its learner had taken 14,877 samples when SDM's had
26,228 and the workers had emitted 28,262. A deployment gives each learner the trainers it needs, so an
experiment waits for the slowest one instead, at two moments:

- `caught_up`, before each scored slice of a replay and each page of the closed loop: every learner has
  taken all but `max_lag` of the samples the workers emitted. Progress is read from Prometheus endpoints:
  the workers' `xdm_stream_samples_total` (summed) and each learner's samples trained + duplicates
  skipped + dead letters (every sample it has handled for good). The waits are counted and reported,
  and `max_lag` set high turns them off. A learner that stops making progress while behind is an error
  after `stall_timeout_s`, not a hang. The counters live as long as their process: this assumes what an
  experiment does, that no worker or learner restarts during the run (a restarted learner would count
  from zero and look stalled).
- `settled`, before the closed loop's A/B days: every learner has trained on every warm-up sample and
  published the model that did. Only the learners' version announcements tell what a published model has
  trained on (`trained_samples`). A learner with samples left trains a step within `learner.max_wait_ms`
  and announces a version at least every `learner.publish_every_s` while it has new steps, so
  announcements that stop changing for longer than that mean the learner has nothing left to train on.
  All arms share one samples topic, so once settled they have trained on the same number of samples; a
  difference is logged. A learner still training at the deadline is logged and the experiment goes on.
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.request
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer
from prometheus_client.parser import text_string_to_metric_families

from learner.model_store import decode_announcement
from xdm.client_security import kafka_client_kwargs
from xdm.config import Config
from xdm.progress import progress_bar

log = logging.getLogger(__name__)
WORKER_SAMPLES = "xdm_stream_samples"
LEARNER_TAKEN = ("xdm_learner_samples", "xdm_learner_duplicate_samples", "xdm_learner_dead_letters")
QUIET_MARGIN_S = 15.0  # beyond the learner's publish interval, for a step in progress and the announcement


class LearnerStalled(RuntimeError):
    """A learner stayed behind without progress (or unreachable) for longer than the stall timeout."""


@dataclass
class CatchUpStats:
    waits: int = 0  # slices or pages that had to wait for a learner
    wait_s: float = 0.0
    max_lag_seen: int = 0  # the largest lag found before waiting, in samples


@dataclass
class LearnerProgress:
    """The newest announcement of each learner, and whether they all settled in time."""

    trained_samples: dict[str, int] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    idle: bool = False
    waited_s: float = 0.0


def quiet_period_s(cfg: Config) -> float:
    lc = cfg.learner
    return lc.publish_every_s + lc.max_wait_ms / 1000 + QUIET_MARGIN_S


@dataclass
class LearnerWait:
    """Waits for the learners of `learner_urls` (by arm) against the workers of `worker_urls`."""

    worker_urls: list[str]
    learner_urls: dict[str, str]  # learner (arm) -> metrics URL
    max_lag: int = 2000
    stall_timeout_s: float = 300.0
    poll_s: float = 0.25
    stats: CatchUpStats = field(default_factory=CatchUpStats)

    async def caught_up(self) -> dict[str, int]:
        """Block until every learner is within max_lag samples of the workers; returns the lags then."""
        started = time.monotonic()
        progress_at: dict[str, tuple[int, float]] = {}
        first = True
        while True:
            emitted, taken, errors = await asyncio.to_thread(self._read)
            lags = {arm: emitted - n for arm, n in taken.items()}
            if first and lags:
                self.stats.max_lag_seen = max(self.stats.max_lag_seen, max(lags.values()))
            behind = {arm: lag for arm, lag in lags.items() if lag > self.max_lag} | errors
            if not behind:
                if not first:
                    self.stats.waits += 1
                    self.stats.wait_s += time.monotonic() - started
                return lags
            first = False
            self._check_stalled(behind, taken, progress_at)
            await asyncio.sleep(self.poll_s)

    async def settled(self, cfg: Config, timeout_s: float, quiet_s: float | None = None,
                      show: bool = False) -> LearnerProgress:
        """Block until each learner has announced a version and none announced more samples for `quiet_s`
        (default: `quiet_period_s(cfg)`), or `timeout_s` passed."""
        learners = tuple(self.learner_urls)
        quiet_s = quiet_period_s(cfg) if quiet_s is None else quiet_s
        consumer = AIOKafkaConsumer(cfg.kafka.versions_topic, **kafka_client_kwargs(cfg.kafka, "aiokafka"),
                                    auto_offset_reset="earliest", enable_auto_commit=False)
        await consumer.start()
        progress = LearnerProgress()
        started = time.monotonic()
        changed_at = started
        bar = progress_bar(desc="learners: samples trained (slowest)", unit="sample", show=show)
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

    def _check_stalled(self, behind: dict, taken: dict[str, int], progress_at: dict[str, tuple[int, float]]) -> None:
        now = time.monotonic()
        for arm, why in behind.items():
            count = taken.get(arm, -1)
            last_count, since = progress_at.get(arm, (None, now))
            if count != last_count:
                progress_at[arm] = (count, now)
                continue
            if now - since > self.stall_timeout_s:
                state = why if isinstance(why, str) else f"{why:,} samples behind the workers"
                raise LearnerStalled(f"the learner of arm {arm} made no progress for {self.stall_timeout_s:g} s "
                                     f"({state}); see its log")

    def _read(self) -> tuple[int, dict[str, int], dict[str, str]]:
        """(samples the workers emitted, samples each reachable learner took, unreachable learners)."""
        taken: dict[str, int] = {}
        try:
            emitted = sum(_scrape(url).get(WORKER_SAMPLES, 0) for url in self.worker_urls)
        except OSError as exc:
            return 0, taken, {arm: f"a worker's metrics endpoint is unreachable: {exc}" for arm in self.learner_urls}
        errors: dict[str, str] = {}
        for arm, url in self.learner_urls.items():
            try:
                values = _scrape(url, arm)
            except OSError as exc:  # not listening yet, or gone
                errors[arm] = f"metrics endpoint {url} unreachable: {exc}"
                continue
            taken[arm] = sum(values.get(name, 0) for name in LEARNER_TAKEN)
        return int(emitted), taken, errors


def _scrape(url: str, arm: str | None = None) -> dict[str, int]:
    """Counter totals by family name; with arm, only the samples labelled with that arm."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    out: dict[str, int] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.endswith("_total") or (arm is not None and sample.labels.get("arm") != arm):
                continue
            out[family.name] = out.get(family.name, 0) + int(sample.value)
    return out


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
