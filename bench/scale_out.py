"""Scale-out on one box: stream events/s with 1, 2 and 3 workers, Recall QPS with 1 and 2 servers.

Stream. A simulated log is produced once into the embedded broker (a backlog, 6 partitions per event
topic). For each worker count N, N `xdm worker` processes are started together under a fresh app id
(own consumer group, table and changelog), so every run reads the same records. Their Prometheus
counters are polled every 50 ms:
- `events/s steady`: events applied after the group settled (every worker owns partitions and together
  all of them) / seconds from then until the last event is applied: the rate N workers sustain;
- `events/s first->last`: all events / seconds from the first record consumed by any worker to the last
  one applied, the method of bench/stream_throughput.py; it includes the group joins and rebalances.
Each run's changelog is checked against the pure window rules applied to the log (users differing).

Recall. One model version (10 k items) is published and users' windows written as in
bench/serving_latency.py; then 1 and 2 `xdm serve` processes are driven by its closed-loop load generator
through one channel with client-side round robin (the client set-up of README "Scale-out"), at the same
concurrency; each server's answer counter shows the spread.

Ratios (2w/1w, 3w/1w, 2s/1s) compare runs of the same invocation. On a 2-core machine, more than two busy
processes cannot scale beyond ~2x (the broker, the load generator and other jobs share those cores): the
figures are what this box does, not what N machines would do. Events per CPU-second show whether the
per-process cost changed with N, and the cores the workers, the broker and the servers got (CPU seconds /
wall seconds of the run) show how much of the box the processes could actually use.
Writes bench/results/scale_out/scale_out.json and prints a table.

    .venv/bin/python bench/scale_out.py [--quick] [--users 500 --days 4] [--workers 1 2 3] [--servers 1 2]
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
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import serving_latency  # noqa: E402  (its publish, windows writer and load generator)
from bench.stream_throughput import _cpu_seconds, _differing_users, _scrape  # noqa: E402
from infra.processes import ManagedProcess, free_port, start_process  # noqa: E402
from infra.services import start_broker  # noqa: E402
from infra.stack import Stack, config_env, start_services  # noqa: E402
from infra.topics import ensure_topics  # noqa: E402
from replay.producer import produce_log  # noqa: E402
from replay.simulate import simulate  # noqa: E402
from stream.samples import step  # noqa: E402
from stream.windows import Outcome, UserState  # noqa: E402
from xdm.config import Config, apply_overrides, load_config  # noqa: E402
from xdm.log_format import read_events, read_items  # noqa: E402
from xdm.records import Item  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "scale_out" / "scale_out.json"
ITEMS_SERVED = 10_000  # catalogue of the published version (publish ~1.2 s; search cost as in the README table)
CONCURRENCY = 32  # callers: 16 per server with two, still enough to keep each one batching
ROUND_ROBIN = (("grpc.lb_policy_name", "round_robin"),)
CORES_NOTE = ("{cores} cores: more than {cores} busy processes cannot scale beyond ~{cores}x here; the broker, "
              "the load generator and other jobs share the same cores")


# ---- stream workers


@dataclass
class GroupWatch:
    """What polling the workers' counters saw during one run."""

    first_at: float | None = None  # first record consumed by any worker
    settled_at: float | None = None  # every worker owns partitions, together all of them
    applied_at_settle: int = 0
    done_at: float | None = None
    cpu_at_done: float = 0.0  # CPU seconds of the workers since first_at
    broker_cpu_at_done: float = 0.0  # of the broker, same span
    metrics: list[dict[str, float]] = field(default_factory=list)  # per worker, at the end


def stream_run(n: int, base: Config, root: Path, broker_pid: int, expected_applied: int,
               reference: dict[str, UserState], timeout_s: float) -> dict:
    """N workers consume the whole backlog under a fresh app id; rates from their counters."""
    cfg = apply_overrides(base, {"stream.app_id": f"scale-{n}w"})
    ensure_topics(cfg)  # this app id's changelog
    ports = [free_port() for _ in range(n)]
    procs = []
    for i, port in enumerate(ports):
        wcfg = apply_overrides(cfg, {"stream.data_dir": str(root / f"{n}w-{i}"), "stream.metrics_port": port})
        procs.append(start_process(f"{n}w-{i}", [sys.executable, "-m", "xdm", "worker"], root / "logs",
                                   env=config_env(wcfg), cwd=ROOT))
    try:
        watch = _watch_group(procs, broker_pid, ports, 2 * cfg.kafka.partitions, expected_applied, timeout_s)
        differing = asyncio.run(_differing_users(cfg, reference))
        if differing:  # a re-applied event can end the watch a moment early: look once more
            time.sleep(3)
            differing = asyncio.run(_differing_users(cfg, reference))
    finally:
        for proc in procs:
            proc.stop()
    steady_events = expected_applied - watch.applied_at_settle
    steady_s = watch.done_at - watch.settled_at if watch.settled_at is not None else 0.0
    whole_s = watch.done_at - watch.first_at
    cpu_s = watch.cpu_at_done
    return {
        "workers": n,
        "events": expected_applied,
        "settle_s": round(watch.settled_at - watch.first_at, 2) if watch.settled_at is not None else None,
        "steady_events": steady_events,
        "steady_s": round(steady_s, 2),
        # None when the backlog ran out before the group settled: the log is too small for N workers
        "events_per_s_steady": round(steady_events / steady_s) if steady_s > 1 and steady_events > 0 else None,
        "first_to_last_s": round(whole_s, 2),
        "events_per_s_first_to_last": round(expected_applied / whole_s),
        "cpu_s": round(cpu_s, 2),  # all workers, first consumed record to last applied
        "events_per_cpu_s": round(expected_applied / cpu_s) if cpu_s > 0 else None,
        # cores the workers and the broker got: on a shared box this, not N, is what bounds events/s
        "worker_cores_used": round(cpu_s / whole_s, 2),
        "broker_cores_used": round(watch.broker_cpu_at_done / whole_s, 2),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "applied_by_worker": [int(m.get("xdm_stream_applied_total", 0)) for m in watch.metrics],
        "duplicates": int(sum(m.get("xdm_stream_duplicates_total", 0) for m in watch.metrics)),
        "users_differing_from_rules": differing,
    }


def _watch_group(procs: list[ManagedProcess], broker_pid: int, ports: list[int], partitions: int, expected: int,
                 timeout_s: float) -> GroupWatch:
    watch = GroupWatch()
    deadline = time.monotonic() + timeout_s
    cpu0 = broker_cpu0 = 0.0
    while time.monotonic() < deadline:
        for proc in procs:
            if not proc.alive():
                raise RuntimeError(f"worker {proc.name} died:\n{proc.log_tail()}")
        metrics = [_scrape(port) for port in ports]
        now = time.monotonic()
        applied = int(sum(m.get("xdm_stream_applied_total", 0) for m in metrics))
        owned = [int(m.get("xdm_stream_assigned_partitions", 0)) for m in metrics]
        if watch.first_at is None and any(m.get("xdm_stream_events_total", 0) > 0 for m in metrics):
            watch.first_at, cpu0 = now, sum(_cpu_seconds(p.pid) for p in procs)
            broker_cpu0 = _cpu_seconds(broker_pid)
        if watch.settled_at is None and all(owned) and sum(owned) == partitions and watch.first_at is not None:
            watch.settled_at, watch.applied_at_settle = now, applied
        if applied >= expected:
            watch.done_at, watch.metrics = now, metrics
            watch.cpu_at_done = sum(_cpu_seconds(p.pid) for p in procs) - cpu0
            watch.broker_cpu_at_done = _cpu_seconds(broker_pid) - broker_cpu0
            return watch
        time.sleep(0.05)
    raise TimeoutError(f"{len(procs)} workers applied {applied} of {expected} events in {timeout_s:.0f} s")


def reference_states(log_dir: Path, cfg: Config) -> tuple[dict[str, UserState], int]:
    """The pure rules over the log in time order, and how many events they apply (the workers' target)."""
    items = read_items(log_dir)
    states: dict[str, UserState] = {}
    applied = 0
    for event in read_events(log_dir):
        state = states.setdefault(event.user_id, UserState())
        result = step(state, event, items.get(event.item_id) or Item(event.item_id), cfg.windows, cfg.samples)
        applied += result.outcome is Outcome.APPLIED
    return states, applied


def stream_part(args: argparse.Namespace, root: Path, broker: ManagedProcess) -> dict:
    log_dir = root / "log"
    summary = simulate(args.users, args.items, args.days, args.seed, log_dir, progress=False)
    base = load_config("local", env={}, overrides={"kafka.bootstrap": broker.address,
                                                   "kafka.partitions": args.partitions})
    ensure_topics(base)
    produced = produce_log(base.kafka, log_dir, progress=False)
    reference, expected = reference_states(log_dir, base)
    rows = []
    for n in args.workers:
        rows.append(stream_run(n, base, root, broker.pid, expected, reference, args.stream_timeout))
        print(f"  {n} worker(s): {rows[-1]['events_per_s_steady']} events/s steady", flush=True)
    return {"log": {"users": args.users, "items": args.items, "days": args.days, "seed": args.seed,
                    "events": summary.events, "clicks": summary.clicks},
            "partitions": args.partitions, "produce_events_per_s": round(produced.events_per_s), "rows": rows}


# ---- Recall servers


def serving_part(args: argparse.Namespace, stack: Stack) -> dict:
    arm = f"n{ITEMS_SERVED}"
    publish_s = serving_latency._publish(stack.cfg, ITEMS_SERVED)
    serving_latency._write_windows(stack.cfg, ITEMS_SERVED)
    load_args = argparse.Namespace(requests=args.requests, seconds=args.seconds)
    rows = []
    for n in args.servers:
        ports = [(free_port(), free_port()) for _ in range(n)]
        procs = []
        for i, (port, metrics) in enumerate(ports):
            scfg = apply_overrides(stack.cfg, {"serving.port": port, "serving.metrics_port": metrics})
            proc = start_process(f"server-{n}s-{i}", [sys.executable, "-m", "xdm", "serve"], stack.root / "logs",
                                 ports=(port, metrics), env=config_env(scfg), cwd=ROOT)
            stack.processes.append(proc)  # stopped with the stack whatever happens
            procs.append(proc)
        try:
            for port, _ in ports:
                serving_latency._wait_model(f"127.0.0.1:{port}", (ITEMS_SERVED,))
            before = [_answers(m) for _, m in ports]
            cpu0, client_cpu0, began = sum(_cpu_seconds(p.pid) for p in procs), time.process_time(), time.monotonic()
            target = "ipv4:" + ",".join(f"127.0.0.1:{port}" for port, _ in ports)
            stats = asyncio.run(serving_latency._load(target, arm, CONCURRENCY, load_args, ROUND_ROBIN))
            seconds = time.monotonic() - began
            server_cpu = sum(_cpu_seconds(p.pid) for p in procs) - cpu0
            client_cpu = time.process_time() - client_cpu0  # the load generator: this process, all threads
            answered = [_answers(m) - b for (_, m), b in zip(ports, before)]
        finally:
            for proc in procs:
                proc.stop()
                stack.processes.remove(proc)
        rows.append({"servers": n, "concurrency": CONCURRENCY, "qps": round(stats["qps"], 1),
                     "p50_ms": round(stats["p50_ms"], 2), "p99_ms": round(stats["p99_ms"], 2),
                     "requests": stats["requests"], "errors": stats["errors"], "answers_by_server": answered,
                     "server_cores_used": round(server_cpu / seconds, 2),
                     # CPU per answer: with micro-batching, splitting the callers over servers shrinks batches
                     "server_cpu_ms_per_request": round(1000 * server_cpu / max(sum(answered), 1), 2),
                     "client_cores_used": round(client_cpu / seconds, 2),
                     "load_average_1m": round(os.getloadavg()[0], 2)})
        print(f"  {n} server(s): {stats['qps']:.0f} QPS", flush=True)
    return {"items": ITEMS_SERVED, "users": serving_latency.USERS, "publish_s": publish_s, "rows": rows}


def _answers(metrics_port: int) -> int:
    """Recall answers a server has given (its Prometheus counter), to show the round robin's spread."""
    text = _metrics_text(metrics_port)
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("xdm_recall_answers_total{")))


def _metrics_text(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()


# ---- report


def _ratio(rows: list[dict], key: str, count_key: str, n: int) -> float | None:
    by = {r[count_key]: r.get(key) for r in rows}
    if by.get(1) and by.get(n):
        return round(by[n] / by[1], 2)
    return None


def _report(result: dict) -> None:
    cores = result["cores"]
    s = result["stream"]
    print(f"\nStream workers: {s['log']['events']:,} events of {s['log']['users']:,} users, {s['partitions']} "
          f"partitions per event topic (backlog produced at {s['produce_events_per_s']:,} events/s)")
    print(f"{'workers':>7} {'events/s steady':>15} {'vs 1w':>6} {'ev/s first->last':>16} {'vs 1w':>6} "
          f"{'ev/cpu-s':>8} {'cores w/b':>9} {'settle s':>8} {'applied by worker':>24} {'users != rules':>14}")
    for r in s["rows"]:
        n = r["workers"]
        steady = _ratio(s["rows"], "events_per_s_steady", "workers", n)
        whole = _ratio(s["rows"], "events_per_s_first_to_last", "workers", n)
        print(f"{n:>7} {r['events_per_s_steady'] or 0:>15,} {steady or 0:>6.2f} {r['events_per_s_first_to_last']:>16,} "
              f"{whole or 0:>6.2f} {r['events_per_cpu_s'] or 0:>8,} "
              f"{r['worker_cores_used']:>4.2f}/{r['broker_cores_used']:<4.2f} {r['settle_s'] or 0:>8.1f} "
              f"{'/'.join(str(a) for a in r['applied_by_worker']):>24} {r['users_differing_from_rules']:>14}")
    v = result.get("serving")
    if v:
        print(f"\nRecall servers: {v['items']:,} items, {v['users']:,} users, concurrency {CONCURRENCY}, "
              "one client channel with round robin")
        print(f"{'servers':>7} {'QPS':>8} {'vs 1s':>6} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} "
              f"{'server cores':>12} {'cpu ms/req':>10} {'client cores':>12} {'answers by server':>20}")
        for r in v["rows"]:
            ratio = _ratio(v["rows"], "qps", "servers", r["servers"])
            print(f"{r['servers']:>7} {r['qps']:>8.0f} {ratio or 0:>6.2f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
                  f"{r['errors']:>6} {r['server_cores_used']:>12.2f} {r['server_cpu_ms_per_request']:>10.2f} "
                  f"{r['client_cores_used']:>12.2f} "
                  f"{'/'.join(str(a) for a in r['answers_by_server']):>20}")
    print("\nratios:", ", ".join(f"{k} {v}" for k, v in result["ratios"].items()))
    print("note:", result["note"], f"(load average at the end {result['load_average_1m_at_end']})")


def main() -> None:
    args = _args()
    if args.quick:
        args.users, args.days, args.requests, args.seconds = 100, 2, 600, 5.0
    root = Path(tempfile.mkdtemp(prefix="xdm-bench-scale-"))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0
    started = time.monotonic()
    # a broker of its own: its topics get --partitions, not the serving stack's default
    broker = start_broker(root / "logs")
    try:
        print("stream workers ...", flush=True)
        stream = stream_part(args, root, broker)
    finally:
        broker.stop()
    serving = None
    if args.servers:
        print("recall servers ...", flush=True)
        cfg = load_config("local", env={}, overrides={"model.embed_dim": 64})  # serving_latency's model size
        stack = start_services(root / "stack", cfg, "local", arms=f"n{ITEMS_SERVED}:1")
        try:
            serving = serving_part(args, stack)
        finally:
            stack.stop()
    ratios = {f"{n}w/1w steady": _ratio(stream["rows"], "events_per_s_steady", "workers", n)
              for n in args.workers if n != 1}
    ratios.update({f"{n}w/1w first->last": _ratio(stream["rows"], "events_per_s_first_to_last", "workers", n)
                   for n in args.workers if n != 1})
    if serving:
        ratios.update({f"{n}s/1s": _ratio(serving["rows"], "qps", "servers", n) for n in args.servers if n != 1})
    result = {
        "machine": platform.machine(), "cores": cores, "quick": args.quick, "stream": stream, "serving": serving,
        "ratios": ratios, "note": CORES_NOTE.format(cores=cores),
        "load_average_1m_at_end": round(os.getloadavg()[0], 2), "wall_s": round(time.monotonic() - started, 1),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    _report(result)
    print(f"wrote {RESULTS.relative_to(ROOT)} ({result['wall_s']} s)")


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a tiny run (100 users, 2 days, 5 s of load)")
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--items", type=int, default=3000)
    parser.add_argument("--days", type=int, default=4)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=6, help="per event topic; >= the most workers")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--servers", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--requests", type=int, default=4000, help="Recall requests per server count")
    parser.add_argument("--seconds", type=float, default=20.0, help="time bound per server count")
    parser.add_argument("--stream-timeout", type=float, default=180.0, help="per worker count (s)")
    return parser.parse_args()


if __name__ == "__main__":
    main()
