"""Back-pressure on the learners: before a slice is scored, every arm's learner has taken all but at most
`max_lag` of the samples the workers emitted.

Without it a replay compares hardware as much as models: on a small machine the learner whose steps cost
more (XDM's, or any arm with more rehearsal steps) falls further behind the log as the replay goes, and
its arm is served by a model that has seen fewer samples. Measured: replaying the 6,000-user, 14-day world on two
cores with 4 rehearsal steps for XDM, its learner had taken 14,877 samples when SDM's had 26,228 and the
workers had emitted 28,262. A deployment gives each learner the trainers it needs, so the replay waits
for the slowest one instead; the waits are counted and reported, and `max_lag` set high turns it off.

Progress is read from Prometheus endpoints: the workers' `xdm_stream_samples_total` (summed) and each
learner's samples trained + duplicates skipped + dead letters (every sample it has handled for good).
A learner that stops making progress while behind is an error after `stall_timeout_s`, not a hang.
The counters live as long as their process: the gate assumes what an experiment does, that no worker
or learner restarts during the run (a restarted learner would count from zero and look stalled).
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

WORKER_SAMPLES = "xdm_stream_samples"
LEARNER_TAKEN = ("xdm_learner_samples", "xdm_learner_duplicate_samples", "xdm_learner_dead_letters")


class LearnerStalled(RuntimeError):
    """A learner stayed behind without progress (or unreachable) for longer than the stall timeout."""


@dataclass
class GateStats:
    waits: int = 0  # slices that had to wait for a learner
    wait_s: float = 0.0
    max_lag_seen: int = 0  # the largest lag found before waiting, in samples


@dataclass
class LearnerGate:
    worker_urls: list[str]
    learner_urls: dict[str, str]  # learner (arm) -> metrics URL
    max_lag: int = 2000
    stall_timeout_s: float = 300.0
    poll_s: float = 0.25
    stats: GateStats = field(default_factory=GateStats)

    async def wait(self) -> dict[str, int]:
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
