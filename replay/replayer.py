"""`xdm replay`: feed a recorded (or simulated) log through the live system and score its Recall answers.

Protocol (replay evaluation). The log is cut into event-time slices of `slice_ms`. For each slice:
1. the system has processed every earlier event: the replayer waits until the windows changelog shows,
   for each user who had events, a state at least as new as that user's last produced event;
2. every sampled impression request of the slice (a user's impressions sharing a request_id, or a
   timestamp when the log has no request ids) asks the live Recall server for that user's top-80
   (the server picks the arm by sticky user hash, as in a real A/B test; `paired`: every arm, by name);
3. the answer is scored against the user's next 5 clicks after the request in the log (HR, MRR, R, F1
   at 50 and 80, learner.metrics); then the slice's events are produced.
Answers therefore never see the clicks they are scored on, and see the user's state at most one slice
old. Users are the unit of the A/B statistics (replay.abstats). Producing waits for the workers
(back-pressure through step 1, replay.worker_sync), so nothing is dropped however fast the log is
replayed; with a learner wait, scoring also waits until every arm's learner is within `max_learner_lag`
samples of the workers (replay.learner_wait), so a learner slower than its machine does not handicap its arm.

A run keeps its scored requests in `scores.jsonl` and its position in `state.json` in the output folder;
`--resume` re-sends the events before the position without scoring (rebuilding the same live state on a
fresh embedded broker) and carries on scoring after it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from bisect import bisect_right
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import grpc

from learner.metrics import metrics_at
from replay.learner_wait import LearnerWait
from replay.producer import make_producer, produce_catalogue
from replay.skipped import SkipIndex, flat_fields
from replay.worker_sync import WorkerSync
from serving.arms import Arms
from serving.client import RecallClient
from xdm.config import Config
from xdm.log_format import read_events, read_items, read_users
from xdm.progress import progress_bar
from xdm.records import Event
from xdm.time_units import DAY_MS
from xdm.v1 import recall_pb2

log = logging.getLogger(__name__)
N_LABELS = 5
TOP_N = 80
CUTS = (50, 80)


@dataclass(frozen=True)
class ReplayOptions:
    slice_ms: int = 30 * 60_000  # event-time slice between two synchronisations
    eval_fraction: float = 0.2  # share of impression requests that query Recall
    seed: int = 0  # request sampling
    concurrency: int = 8  # Recall calls in flight
    sync_timeout_s: float = 60.0  # longest wait for the workers to catch up with a slice
    paired: bool = False  # every sampled request asks every arm (same users in each arm; replay.abstats)
    warm_days: float = 0.0  # the log's first days train the system unscored (an A/B starts from trained arms)
    max_learner_lag: int = 2000  # samples a learner may be behind the workers when a slice is scored (replay.learner_wait)
    resume: bool = False


@dataclass
class ScoredRequest:
    user_id: str
    ts_ms: int
    arm: str
    version: int
    fallback: bool
    hr50: float
    mrr50: float
    r50: float
    f150: float
    hr80: float
    mrr80: float
    r80: float
    f180: float
    skip: dict = field(default_factory=dict)  # replay.skipped's columns, written flat into scores.jsonl


@dataclass
class ReplayProgress:
    events_sent: int = 0
    slices: int = 0
    scored: int = 0
    errors: int = 0
    sync_timeouts: int = 0
    log_start_ms: int | None = None  # the first event's time: warm-up days count from it
    started_wall: float = field(default_factory=time.time)


class ClickIndex:
    """Every user's clicks in time order, to look up the next clicks after a request."""

    def __init__(self) -> None:
        self._ts: dict[str, list[int]] = defaultdict(list)
        self._items: dict[str, list[str]] = defaultdict(list)

    def add(self, event: Event) -> None:
        self._ts[event.user_id].append(event.ts_ms)
        self._items[event.user_id].append(event.item_id)

    def next_clicks(self, user_id: str, after_ms: int, n: int = N_LABELS) -> list[str]:
        ts = self._ts.get(user_id)
        if not ts:
            return []
        start = bisect_right(ts, after_ms)
        return self._items[user_id][start:start + n]


def sampled(user_id: str, request_key: str, fraction: float, seed: int) -> bool:
    """Whether a request is scored: a pure function of its identity, so runs and resumes agree."""
    digest = hashlib.blake2b(f"{seed}|{user_id}|{request_key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < fraction


def index_clicks(log_dir: Path) -> ClickIndex:
    index = ClickIndex()
    for event in read_events(log_dir):
        if event.kind == "click":
            index.add(event)
    return index


def slices(events: Iterator[Event], slice_ms: int) -> Iterator[list[Event]]:
    """Consecutive groups of events whose ts falls in the same slice_ms bucket."""
    batch: list[Event] = []
    bucket = None
    for event in events:
        b = event.ts_ms // slice_ms
        if bucket is not None and b != bucket and batch:
            yield batch
            batch = []
        bucket = b
        batch.append(event)
    if batch:
        yield batch


def requests_of(batch: list[Event], opts: ReplayOptions) -> list[tuple[str, int]]:
    """(user, ts) of the sampled impression requests in a slice, first impression of each request."""
    seen: set[tuple[str, str]] = set()
    out = []
    for event in batch:
        if event.kind != "impression":
            continue
        key = (event.user_id, event.request_id or str(event.ts_ms))
        if key in seen:
            continue
        seen.add(key)
        if sampled(event.user_id, key[1], opts.eval_fraction, opts.seed):
            out.append((event.user_id, event.ts_ms))
    return out


class Replayer:
    def __init__(self, cfg: Config, log_dir: Path, out_dir: Path, recall_address: str, opts: ReplayOptions,
                 learners: LearnerWait | None = None) -> None:
        """learners: waited for before each scored slice (None: learners are not waited for)."""
        self.cfg = cfg
        self.learners = learners
        # Paired: the log does not depend on the answers and every arm's learner trains on every user,
        # so each arm can answer each request; otherwise ("") the server's sticky assignment picks one.
        self.asked_arms = Arms.parse(cfg.serving.arms).names if opts.paired else ("",)
        self.log_dir = Path(log_dir)
        self.out_dir = Path(out_dir)
        self.address = recall_address
        self.opts = opts
        self.progress = ReplayProgress()

    def run(self, progress_bar: bool = True, limit_events: int | None = None) -> ReplayProgress:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        resume_at = self._resume_point()
        clicks = index_clicks(self.log_dir)
        self.skips = SkipIndex(self.cfg.windows.unclicked_ms, read_items(self.log_dir))
        return asyncio.run(self._run(clicks, resume_at, progress_bar, limit_events))

    async def _run(self, clicks: ClickIndex, resume_at: int, bar_on: bool, limit: int | None) -> ReplayProgress:
        producer = make_producer(self.cfg.kafka)
        produce_catalogue(producer, self.cfg.kafka, self.log_dir)
        workers = WorkerSync(self.cfg, producer, name="replay-sync")
        await workers.start()
        scores = open(self.out_dir / "scores.jsonl", "a" if resume_at else "w")
        bar = progress_bar(desc="replaying", unit="ev", show=bar_on, smoothing=0.05)
        client = RecallClient(self.cfg, self.address)
        try:
            for batch in slices(read_events(self.log_dir), self.opts.slice_ms):
                if limit is not None and self.progress.events_sent >= limit:
                    break
                if self.progress.log_start_ms is None:
                    self.progress.log_start_ms = batch[0].ts_ms
                skipping = self.progress.events_sent + len(batch) <= resume_at
                if not skipping:
                    if not await workers.wait(self.opts.sync_timeout_s):
                        self.progress.sync_timeouts += 1
                    if self.learners is not None:
                        await self.learners.caught_up()
                    if batch[0].ts_ms >= self.progress.log_start_ms + self.opts.warm_days * DAY_MS:
                        await self._score(client, batch, clicks, scores)
                workers.send(batch)
                for event in batch:
                    self.skips.add(event)
                self.progress.events_sent += len(batch)
                self.progress.slices += 1
                bar.update(len(batch))
                waits = {"learner_waits": self.learners.stats.waits} if self.learners is not None else {}
                bar.set_postfix(scored=self.progress.scored, lag_users=len(workers.pending), **waits, refresh=False)
                if not skipping:
                    self._save_state()
            producer.flush()
        finally:
            bar.close()
            scores.close()
            await client.close()
            await workers.stop()
            producer.close(timeout=10)
        self._save_state()
        return self.progress

    async def _score(self, client: RecallClient, batch: list[Event], clicks: ClickIndex, out) -> None:
        wanted = [(u, t, clicks.next_clicks(u, t)) for u, t in requests_of(batch, self.opts)]
        wanted = [(u, t, labels) for u, t, labels in wanted if labels]
        gate = asyncio.Semaphore(self.opts.concurrency)

        async def one(user: str, ts: int, labels: list[str], arm: str) -> ScoredRequest | None:
            async with gate:
                try:
                    answer = await client.recall(recall_pb2.RecallRequest(user_id=user, k=TOP_N, arm=arm), timeout_s=10)
                except grpc.aio.AioRpcError as err:
                    self.progress.errors += 1
                    log.warning("recall failed during replay", extra={"code": err.code().name})
                    return None
            ranked = [i.item_id for i in answer.items]
            m50, m80 = (metrics_at(ranked, labels, n) for n in CUTS)
            return ScoredRequest(user, ts, answer.arm, answer.model_version, answer.fallback,
                                 m50.hr, m50.mrr, m50.recall, m50.f1, m80.hr, m80.mrr, m80.recall, m80.f1,
                                 flat_fields(self.skips.figures(user, ts, ranked)))

        for scored in await asyncio.gather(*(one(*w, arm) for w in wanted for arm in self.asked_arms)):
            if scored is not None:
                row = asdict(scored)
                row.update(row.pop("skip"))
                out.write(json.dumps(row) + "\n")
                self.progress.scored += 1
        out.flush()

    def _resume_point(self) -> int:
        path = self.out_dir / "state.json"
        if not self.opts.resume or not path.exists():
            return 0
        state = json.loads(path.read_text())
        log.info("resuming replay", extra={"events_sent": state["events_sent"]})
        return int(state["events_sent"])

    def _save_state(self) -> None:
        tmp = self.out_dir / "state.json.tmp"
        waits = asdict(self.learners.stats) if self.learners is not None else None
        tmp.write_text(json.dumps(asdict(self.progress) | {"options": asdict(self.opts), "learner_gate": waits}))
        tmp.replace(self.out_dir / "state.json")


def check_log(log_dir: Path) -> None:
    """Fail early, with the file and line, on a log the replay could not finish."""
    read_items(log_dir)
    read_users(log_dir)
    for _ in read_events(log_dir):
        pass
