"""Stream worker throughput on the embedded stack (tansu + RocksDB stores), batched against naive, one run.

A simulated log is produced into the broker first (a backlog), then one `xdm worker` process at a time
consumes all of it under its own app id (own consumer group, table and changelog), so both variants
see the same records in the same broker:

- `batched`: the production settings (batches of stream.batch_max records, one state load and write
  per user per batch, decoded states cached between batches);
- `naive`:   the same worker with stream.batch_max=1 and stream.state_cache_users=0, i.e. one table
  read, decode, encode and write per event, which is what the first worker did.

Throughput is records processed / seconds between the worker's first consumed record and the moment
the last of them is processed (read from the worker's Prometheus counters, polled every 50 ms), and
per CPU-second of the worker process (all threads), which other load on the box changes less. The
naive variant is stopped after `--naive-events` records to keep the run short; its rate is steady long
before. A variant that processed the whole log has its windows checked against the pure rules applied
to the log in time order (users whose state differs).
Writes bench/results/stream_throughput/stream_throughput.json and prints a table.

    .venv/bin/python bench/stream_throughput.py [--users 1000 --days 4] [--naive-events 30000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from infra.processes import ManagedProcess, free_port, start_process  # noqa: E402
from infra.services import start_broker  # noqa: E402
from infra.stack import config_env  # noqa: E402
from infra.topics import ensure_topics  # noqa: E402
from replay.producer import produce_log  # noqa: E402
from replay.simulate import simulate  # noqa: E402
from stream.mirror import TopicMirror  # noqa: E402
from stream.samples import step  # noqa: E402
from stream.state_codec import decode_state  # noqa: E402
from stream.topics import changelog_topic  # noqa: E402
from stream.windows import UserState, snapshot  # noqa: E402
from xdm.config import Config, apply_overrides, load_config  # noqa: E402
from xdm.log_format import read_events, read_items  # noqa: E402
from xdm.records import Item  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "stream_throughput" / "stream_throughput.json"
VARIANTS = {
    "batched": {},
    "naive": {"stream.batch_max": 1, "stream.state_cache_users": 0},
}


def main() -> None:
    args = _args()
    root = Path(tempfile.mkdtemp(prefix="xdm-bench-stream-"))
    log_dir = root / "log"
    summary = simulate(args.users, args.items, args.days, args.seed, log_dir, progress=False)
    broker = start_broker(root / "logs")
    base = load_config("local", env={}, overrides={"kafka.bootstrap": broker.address,
                                                   "kafka.partitions": args.partitions})
    rows = []
    try:
        ensure_topics(base)
        produced = produce_log(base.kafka, log_dir, progress=False)
        reference = _reference(log_dir, base)
        for name in args.variants:
            limit = produced.events if name == "batched" else min(args.naive_events, produced.events)
            rows.append(_run_variant(name, base, root, limit, produced.events, reference, args.timeout))
    finally:
        broker.stop()
    batched = next((r for r in rows if r["variant"] == "batched"), None)
    naive = next((r for r in rows if r["variant"] == "naive"), None)
    result = {
        "machine": platform.machine(), "cores": _cores(), "log": {
            "users": args.users, "items": args.items, "days": args.days, "seed": args.seed,
            "events": summary.events, "clicks": summary.clicks, "impressions": summary.impressions},
        "produce_events_per_s": round(produced.events_per_s), "partitions": args.partitions, "rows": rows,
        "ratio_batched_to_naive": round(batched["events_per_s"] / naive["events_per_s"], 2)
        if batched and naive else None,
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    _print_table(result)


def _run_variant(name: str, base: Config, root: Path, limit: int, total: int, reference: dict[str, UserState],
                 timeout_s: float) -> dict:
    port = free_port()
    cfg = apply_overrides(base, {"stream.app_id": f"bench-{name}", "stream.data_dir": str(root / name),
                                 "stream.metrics_port": port, **VARIANTS[name]})
    ensure_topics(cfg)  # this app id's changelog
    proc = start_process(name, [sys.executable, "-m", "xdm", "worker"], root / "logs", env=config_env(cfg), cwd=ROOT)
    try:
        first_at, done_at, cpu_s, metrics = _watch(proc, port, limit, timeout_s)
        rss_mb = _rss_mb(proc.pid)  # the worker's resident memory with everything it read still held
    finally:
        proc.stop()
    events = _processed(metrics)
    seconds = done_at - first_at
    row = {
        "variant": name, "overrides": VARIANTS[name], "events": events, "seconds": round(seconds, 2),
        "events_per_s": round(events / seconds) if seconds > 0 else None,
        "cpu_s": round(cpu_s, 2),
        "rss_mb_at_end": rss_mb,
        "events_per_cpu_s": round(events / cpu_s) if cpu_s > 0 else None,  # insensitive to other load on the box
        "applied": int(metrics.get("xdm_stream_applied_total", 0)),
        "too_late": int(metrics.get("xdm_stream_too_late_total", 0)),
        "batches": int(metrics.get("xdm_stream_batches_total", 0)),
        "state_writes": int(metrics.get("xdm_stream_state_writes_total", 0)),
        "samples": int(metrics.get("xdm_stream_samples_total", 0)),
    }
    if events >= total:
        row["users_differing_from_rules"] = asyncio.run(_differing_users(cfg, reference))
    return row


def _watch(proc: ManagedProcess, port: int, limit: int, timeout_s: float) -> tuple[float, float, float, dict]:
    """Poll the worker's metrics: times of its first consumed record and of the last one processed,
    and the CPU seconds it used in between (all its threads)."""
    deadline = time.monotonic() + timeout_s
    first_at = None
    cpu_at_first = 0.0
    metrics: dict[str, float] = {}
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"worker {proc.name} died:\n{proc.log_tail()}")
        metrics = _scrape(port)
        now = time.monotonic()
        if first_at is None and metrics.get("xdm_stream_events_total", 0) > 0:
            first_at, cpu_at_first = now, _cpu_seconds(proc.pid)
        if _processed(metrics) >= limit:
            assert first_at is not None
            return first_at, now, _cpu_seconds(proc.pid) - cpu_at_first, metrics
        time.sleep(0.05)
    raise TimeoutError(f"worker {proc.name} processed {_processed(metrics)} of {limit} in {timeout_s:.0f} s")


def _processed(metrics: dict[str, float]) -> int:
    """Records the worker is done with (applied, or dropped as duplicate, too late or dead letter)."""
    names = ("applied", "duplicates", "too_late", "dead_letters")
    return int(sum(metrics.get(f"xdm_stream_{name}_total", 0) for name in names))


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float | None:
    """Resident memory of a process (Linux /proc; None elsewhere)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    kb = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), None)
    return None if kb is None else round(kb / 1024, 1)


def _scrape(port: int) -> dict[str, float]:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, _, value = line.partition(" ")
            out[name] = float(value)
    return out


def _reference(log_dir: Path, cfg: Config) -> dict[str, UserState]:
    items = read_items(log_dir)
    states: dict[str, UserState] = {}
    for event in read_events(log_dir):
        state = states.setdefault(event.user_id, UserState())
        step(state, event, items.get(event.item_id) or Item(event.item_id), cfg.windows, cfg.samples)
    return states


async def _differing_users(cfg: Config, reference: dict[str, UserState]) -> int:
    mirror = TopicMirror(cfg.kafka, changelog_topic(cfg), bytes, name="check")
    await mirror.start()
    try:
        await mirror.wait_caught_up(60)
    finally:
        await mirror.stop()
    bad = 0
    for user, want in reference.items():
        raw = mirror.get(user)
        got = decode_state(raw) if raw else UserState()
        if got.max_ts != want.max_ts or snapshot(got, want.max_ts, cfg.windows) != snapshot(want, want.max_ts,
                                                                                             cfg.windows):
            bad += 1
    return bad


def _print_table(result: dict) -> None:
    log = result["log"]
    print(f"log: {log['events']:,} events ({log['clicks']:,} clicks) of {log['users']:,} users, "
          f"{result['partitions']} partitions, {result['cores']} cores; produced at "
          f"{result['produce_events_per_s']:,} events/s")
    print(f"{'variant':<9} {'events':>9} {'seconds':>8} {'events/s':>9} {'ev/cpu-s':>9} {'batches':>8} "
          f"{'writes':>8} {'too late':>8} {'users != rules':>14}")
    for r in result["rows"]:
        print(f"{r['variant']:<9} {r['events']:>9,} {r['seconds']:>8.1f} {r['events_per_s'] or 0:>9,} "
              f"{r['events_per_cpu_s'] or 0:>9,} {r['batches']:>8,} {r['state_writes']:>8,} {r['too_late']:>8,} "
              f"{r.get('users_differing_from_rules', '-')!s:>14}")
    if result["ratio_batched_to_naive"]:
        print(f"batched / naive: {result['ratio_batched_to_naive']:.1f}x (events/s); load average at the end "
              f"{result['load_average_1m_at_end']}")


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--items", type=int, default=3000)
    parser.add_argument("--days", type=int, default=4)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--naive-events", type=int, default=30_000)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--timeout", type=float, default=300.0, help="per variant (s)")
    return parser.parse_args()


if __name__ == "__main__":
    main()
