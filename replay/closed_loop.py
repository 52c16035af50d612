"""Closed-loop A/B: the simulator is the audience and each arm's recall decides what its users see.

1. Warm-up: the first `warm_days` of a simulated log (the simulator's own exposure policy, the same for
   every user) go through the live system, so every arm starts from a trained model; the A/B days start
   once the workers hold every warm-up event and every arm's learner has trained on every warm-up
   sample (replay.learner_wait), so no arm starts behind because its steps cost more. With the default
   options the world is the 14-day world of 6,000 users (`xdm simulate --users 6000 --days 14`): its
   first 10 days are the warm-up, and its last 4 days are replaced by the A/B days.
2. A/B days: users open sessions; each page of a session asks the live Recall server (sticky arm by user
   hash) for candidates, shows the first `page_size` not yet shown in the session, and the world's click
   model (hidden interests, drift, position bias, session mood) decides the clicks. Impressions and
   clicks go to the broker, so each arm's learner trains on its own users' feedback, and the next page
   sees the windows updated by the previous one (replay.worker_sync waits for the workers between pages,
   as the replayer does between slices).
3. Report: CTR per arm (clicks / impressions over the arm's users) with a cluster-bootstrap interval,
   the CTR lift against the baseline arm with its interval and a delta-method p-value, and CTR per day.

The world's hidden state only drives the simulated users' clicks; every figure in the report is computed
from the impressions and clicks the system was sent, as a live A/B dashboard would.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
import numpy as np

from infra.learner_settings import describe, recorded
from replay.abstats import compare_ratios, ratio_estimate
from replay.learner_wait import LearnerProgress, LearnerWait
from replay.simulate import simulate, world_for
from replay.worker_sync import WorkerSync
from serving.client import RecallClient
from replay.world import World
from xdm.config import Config
from xdm.log_format import read_events
from xdm.plotting import pyplot
from xdm.progress import progress_bar
from xdm.records import Event
from xdm.time_units import DAY_MS, HOUR_MS
from xdm.v1 import recall_pb2

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClosedLoopOptions:
    users: int = 6000  # these five: `xdm simulate --users 6000 --days 14`, seed 1
    items: int = 5000
    warm_days: int = 10
    ab_days: int = 4
    seed: int = 1
    learner_wait_s: float = 3600.0  # longest wait for the learners to finish the warm-up samples
    active_day_prob: float = 0.6  # chance a user opens a session on an A/B day
    pages: int = 6  # pages per session
    page_size: int = 10  # items shown per page
    candidates: int = 60  # items asked from Recall per page
    # Recall calls in flight, as a backend's connection pool would hold: a page of thousands of users at
    # once overflowed the gRPC server's queue of calls not yet taken, and the overflow came back CANCELLED
    concurrency: int = 32
    baseline: str = "sdm"
    max_learner_lag: int = 2000  # samples a learner may be behind the workers when a page is asked (replay.learner_wait)


@dataclass
class ArmTally:
    impressions: dict[str, int]
    clicks: dict[str, int]


def run_closed_loop(cfg: Config, out_dir: Path, opts: ClosedLoopOptions, recall_address: str,
                    learners: LearnerWait, progress: bool = True) -> dict:
    """Warm up, run the A/B days against the live system at recall_address, write and return the report.
    learners: waited for until they settle after the warm-up, and before each page of the A/B days."""
    out_dir.mkdir(parents=True, exist_ok=True)
    days = opts.warm_days + opts.ab_days
    log_dir = out_dir / "warmup-log"
    # The world that wrote the warm-up log carries on into the A/B days (its users' satisfied interests
    # included), so the audience is the same population the models were warmed up on. Only the warm-up
    # days are simulated: the world's state is then the one at the start of the A/B days.
    world = world_for(opts.users, opts.items, days, opts.seed)
    simulate(opts.users, opts.items, opts.warm_days, opts.seed, log_dir, progress=progress, world=world)
    return asyncio.run(_run(cfg, out_dir, opts, recall_address, world, log_dir, progress, learners))


async def _run(cfg: Config, out_dir: Path, opts: ClosedLoopOptions, address: str, world: World, log_dir: Path,
               progress: bool, learners: LearnerWait) -> dict:
    from replay.producer import make_producer, produce_catalogue

    producer = make_producer(cfg.kafka)
    produce_catalogue(producer, cfg.kafka, log_dir)
    warm_end = world.cfg.start_ms + opts.warm_days * DAY_MS
    warm = [e for e in read_events(log_dir) if e.ts_ms < warm_end]
    workers = WorkerSync(cfg, producer, name="closed-loop-sync")
    workers.send(warm, "warm-up events sent" if progress else None)
    await workers.start()
    # the workers need about a second per 5,000 events on two shared cores
    await workers.wait(timeout_s=max(600.0, len(warm) / 2000), since_ms=warm[0].ts_ms if progress and warm else None)
    warm_up = await learners.settled(cfg, opts.learner_wait_s, show=progress)
    rng = np.random.default_rng([opts.seed, 7])
    daily: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    users_seen: dict[str, ArmTally] = defaultdict(lambda: ArmTally(defaultdict(int), defaultdict(int)))
    failed = 0
    client = RecallClient(cfg, address)
    bar = progress_bar(total=opts.ab_days * opts.pages, desc="closed-loop pages", show=progress)
    try:
        for day in range(opts.warm_days, opts.warm_days + opts.ab_days):
            failed += await _day(opts, world, client, workers, rng, day, daily, users_seen, bar, learners)
    finally:
        bar.close()
        await client.close()
        await workers.stop()
        producer.close(timeout=10)
    return _report(out_dir, opts, daily, users_seen, warm_up, failed, learners)


async def _day(opts, world, client, workers, rng, day, daily, tallies, bar, learners) -> int:
    """One A/B day; returns the Recall calls that failed (those users saw no page)."""
    failed = 0
    active = np.flatnonzero(rng.random(opts.users) < opts.active_day_prob * world.users.activity)
    start = world.cfg.start_ms + day * DAY_MS + rng.integers(8, 22, len(active)) * HOUR_MS
    mood = world.session_engagement(len(active), rng)
    shown: list[set[str]] = [set() for _ in active]
    user_ids = world.user_id(active).tolist()
    for page in range(opts.pages):
        ts = start + page * 30_000
        await learners.caught_up()
        in_flight = asyncio.Semaphore(opts.concurrency)
        answers = await asyncio.gather(*(_ask(client, u, opts.candidates, in_flight) for u in user_ids))
        failed += sum(answer is None for answer in answers)
        events: list[Event] = []
        for i, answer in enumerate(answers):
            if answer is None:
                continue
            items = [it for it in answer[1] if it not in shown[i]][: opts.page_size]
            if not items:
                continue
            shown[i].update(items)
            numbers = world.item_number(items)
            p = world.click_prob(int(active[i]), numbers, int(ts[i]), np.arange(len(items)), float(mood[i]))
            clicked = rng.random(len(items)) < p
            arm, user = answer[0], user_ids[i]
            for pos, (item, click) in enumerate(zip(items, clicked)):
                t = int(ts[i]) + pos * 1000
                events.append(Event(f"cl-{day}-{page}-{user}-{pos}-i", t, user, item, "impression", f"r{day}-{page}-{user}", pos))
                if click:
                    events.append(Event(f"cl-{day}-{page}-{user}-{pos}-c", t + 500, user, item, "click", f"r{day}-{page}-{user}", pos))
            hit = clicked.nonzero()[0]
            if len(hit):
                world.observe_clicks(np.full(len(hit), active[i]), numbers[hit], np.full(len(hit), int(ts[i])))
            daily[arm][day][0] += len(items)
            daily[arm][day][1] += int(clicked.sum())
            tallies[arm].impressions[user] += len(items)
            tallies[arm].clicks[user] += int(clicked.sum())
        workers.send(sorted(events, key=lambda e: e.ts_ms))
        await workers.wait(timeout_s=60)
        bar.update(1)
    return failed


async def _ask(client: RecallClient, user: str, k: int, gate: asyncio.Semaphore) -> tuple[str, list[str]] | None:
    try:
        async with gate:
            answer = await client.recall(recall_pb2.RecallRequest(user_id=user, k=k), timeout_s=10)
    except grpc.aio.AioRpcError as err:
        log.warning("recall failed in the closed loop", extra={"code": err.code().name})
        return None
    return answer.arm, [i.item_id for i in answer.items]


def _report(out_dir: Path, opts: ClosedLoopOptions, daily, tallies, warm_up: LearnerProgress,
            failed: int, learners: LearnerWait) -> dict:
    arms = sorted(tallies)
    base = opts.baseline if opts.baseline in arms else arms[0]
    report: dict = {"options": asdict(opts), "baseline": base, "arms": {}, "comparisons": [], "daily": {},
                    "failed_requests": failed, "learner_settings": recorded(out_dir),
                    "learner_gate": asdict(learners.stats),
                    "warm_up": {"learners_idle": warm_up.idle, "waited_s": round(warm_up.waited_s, 1),
                                "trained_samples": warm_up.trained_samples, "versions": warm_up.versions}}
    arrays = {}
    for arm in arms:
        users = sorted(tallies[arm].impressions)
        shown = np.array([tallies[arm].impressions[u] for u in users])
        clicks = np.array([tallies[arm].clicks[u] for u in users])
        arrays[arm] = (clicks, shown)
        est = ratio_estimate(clicks, shown)
        report["arms"][arm] = {"ctr": est.mean, "low": est.low, "high": est.high, "users": est.users,
                               "impressions": int(shown.sum()), "clicks": int(clicks.sum())}
        report["daily"][arm] = {str(d): (c / s if s else 0.0) for d, (s, c) in sorted(daily[arm].items())}
    for arm in arms:
        if arm != base:
            c = compare_ratios(*arrays[base], *arrays[arm], (base, arm))
            report["comparisons"].append({"metric": "ctr", **c.as_dict()})
    (out_dir / "closed_loop.json").write_text(json.dumps(report, indent=2))
    (out_dir / "closed_loop.md").write_text(_markdown(report))
    _plot(report, out_dir)
    return report


def _markdown(report: dict) -> str:
    o, w = report["options"], report["warm_up"]
    trained = ", ".join(f"{arm} {n:,}" for arm, n in sorted(w["trained_samples"].items()))
    start = (f"the A/B days started once every learner had trained on the warm-up samples ({trained}; "
             f"waited {w['waited_s']:.0f} s)" if w["learners_idle"] else
             f"**the learners were still training when the A/B days started** ({trained or 'no version yet'})")
    lines = ["# Closed-loop A/B (the simulator as audience)", "",
             f"{o['users']:,} users, {o['items']:,} items, seed {o['seed']}: {o['warm_days']} warm-up days, then "
             f"{o['ab_days']} A/B days; {start}.", "",
             "| arm | users | impressions | clicks | CTR [95 % CI] |", "|---|---|---|---|---|"]
    for arm, a in sorted(report["arms"].items()):
        lines.append(f"| {arm} | {a['users']} | {a['impressions']:,} | {a['clicks']:,} | "
                     f"{a['ctr']:.2%} [{a['low']:.2%}, {a['high']:.2%}] |")
    lines.append("")
    if report["failed_requests"]:
        lines += [f"**{report['failed_requests']:,} Recall calls failed** (those users saw no page; see the log).", ""]
    for c in report["comparisons"]:
        lines.append(f"CTR lift {c['candidate']} vs {c['baseline']}: {c['lift']:+.1%} "
                     f"[{c['low']:+.1%}, {c['high']:+.1%}], p = {c['p_value']:.3f}"
                     + (" (significant)" if c["significant"] else ""))
    lines += ["", describe(report.get("learner_settings", {})), ""]
    if report.get("learner_gate"):
        g = report["learner_gate"]
        lines += [f"Before each A/B page every learner was within {o['max_learner_lag']:,} samples of the workers "
                  f"(waited {g['waits']} times, {g['wait_s']:.0f} s; largest lag found {g['max_lag_seen']:,}).", ""]
    lines += ["![CTR per day](ctr.png)", ""]
    return "\n".join(lines)


def _plot(report: dict, out_dir: Path) -> None:
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(7, 3.6))
    for arm, days in sorted(report["daily"].items()):
        ax.plot([int(d) for d in days], list(days.values()), marker="o", label=arm)
    ax.set_xlabel("simulated day")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("CTR")
    ax.set_title("Closed-loop CTR per arm and day")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "ctr.png", dpi=110)
    plt.close(fig)
