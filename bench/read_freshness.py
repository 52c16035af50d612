"""Freshness of the read path: a click produced to the broker until `WindowsReader.windows(user)` shows it.

On the embedded stack (tansu, one `xdm worker` with RocksDB stores): a simulated log gives users
Table-1-sized states first (a backlog the worker works off); then, while background traffic flows in
real time (impressions and clicks of other users, stamped now), probe clicks are produced one at a
time and the reader (the serving read replica, a mirror of the windows changelog) is watched until
the probe's user shows that click in its short-term window. Latency = visible - just before the
send, on one clock. Also measures `WindowsReader.rows(user)`, the server's read, over the Table-1-sized users.
Writes bench/results/read_freshness/read_freshness.json and prints a table.

    .venv/bin/python bench/read_freshness.py [--probes 300 --background 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from aiokafka import AIOKafkaProducer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from infra.processes import free_port, start_process, wait_until  # noqa: E402
from infra.services import start_broker  # noqa: E402
from infra.stack import config_env  # noqa: E402
from infra.topics import ensure_topics  # noqa: E402
from replay.producer import produce_log  # noqa: E402
from replay.simulate import simulate  # noqa: E402
from stream.reader import WindowsReader  # noqa: E402
from stream.wire import encode_event  # noqa: E402
from xdm.client_security import kafka_client_kwargs  # noqa: E402
from xdm.config import Config, apply_overrides, load_config  # noqa: E402
from xdm.log_format import read_events  # noqa: E402
from xdm.records import Event  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "read_freshness" / "read_freshness.json"


def main() -> None:
    args = _args()
    root = Path(tempfile.mkdtemp(prefix="xdm-bench-fresh-"))
    log_dir = root / "log"
    simulate(args.users, args.items, args.days, args.seed, log_dir, progress=False)
    broker = start_broker(root / "logs")
    port = free_port()
    cfg = apply_overrides(load_config("local", env={}), {
        "kafka.bootstrap": broker.address, "stream.data_dir": str(root / "worker"), "stream.metrics_port": port})
    worker = None
    try:
        ensure_topics(cfg)
        worker = start_process("worker", [sys.executable, "-m", "xdm", "worker"], root / "logs",
                               env=config_env(cfg), cwd=ROOT)
        produced = produce_log(cfg.kafka, log_dir, progress=False)
        wait_until(lambda: _done(port, produced.events, worker), args.timeout, "worker through the backlog", 0.5)
        users = sorted({e.user_id for e in read_events(log_dir)})
        result = asyncio.run(_measure(cfg, users, args))
        result.update({"log_events": produced.events, "users_with_table1_states": len(users)})
    finally:
        if worker is not None:
            worker.stop()
        broker.stop()
    result["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    _print(result)


def _done(port: int, events: int, worker) -> bool:
    if not worker.alive():
        raise RuntimeError(f"worker died:\n{worker.log_tail()}")
    m = _scrape(port)
    return m.get("xdm_stream_events_total", 0) >= events and m.get("xdm_stream_held_records", 1) == 0


async def _measure(cfg: Config, users: list[str], args: argparse.Namespace) -> dict:
    reader = WindowsReader(cfg)
    await reader.start(wait_s=120)
    try:
        cold_us = [_timed_read(reader, user) for user in users]  # first read: decode and snapshot
        warm_us = _read_latency(reader, users, args.reads)  # unchanged users: served from the reader's cache
        freshness_ms = await _freshness(cfg, reader, args)
    finally:
        await reader.stop()
    return {
        "probes": len(freshness_ms), "background_events_per_s": args.background,
        "freshness_ms": _percentiles(freshness_ms),
        "read_us_first": _percentiles(cold_us),
        "read_us_repeat": _percentiles(warm_us),
        "probes_not_seen": args.probes - len(freshness_ms),
    }


def _read_latency(reader: WindowsReader, users: list[str], n: int) -> list[float]:
    rng = random.Random(0)
    return [_timed_read(reader, rng.choice(users)) for _ in range(n)]


def _timed_read(reader: WindowsReader, user: str) -> float:
    t = time.perf_counter()
    reader.rows(user)
    return (time.perf_counter() - t) * 1e6


async def _freshness(cfg: Config, reader: WindowsReader, args: argparse.Namespace) -> list[float]:
    k = cfg.kafka
    waiting: dict[str, tuple[str, float, asyncio.Future]] = {}  # user -> (item, sent at, seen)

    def on_update(user: str, _value) -> None:
        probe = waiting.get(user)
        if probe is None:
            return
        item, sent_at, seen = probe
        windows = reader.windows(user)
        if windows and any(b.item.item_id == item for b in windows.short) and not seen.done():
            seen.set_result(time.time() - sent_at)

    refresh = reader.mirror.on_update  # the reader's own hook runs first

    def after_refresh(user: str, value) -> None:
        if refresh is not None:
            refresh(user, value)
        on_update(user, value)

    reader.mirror.on_update = after_refresh
    probe_producer = AIOKafkaProducer(**kafka_client_kwargs(k, "aiokafka"), linger_ms=0, acks="all")
    background_producer = AIOKafkaProducer(**kafka_client_kwargs(k, "aiokafka"), linger_ms=5, acks="all")
    await probe_producer.start()
    await background_producer.start()
    background = asyncio.create_task(_background(background_producer, k, args.background))
    out: list[float] = []
    try:
        await asyncio.sleep(2.0)  # traffic flowing before the first probe
        for n in range(args.probes):
            user, item = f"probe-{n % 50}", f"probe-item-{n}"
            seen = asyncio.get_running_loop().create_future()
            sent_at = time.time()
            waiting[user] = (item, sent_at, seen)
            event = Event(f"probe-{n}", int(sent_at * 1000), user, item, "click")
            await probe_producer.send(k.clicks_topic, key=user.encode(), value=encode_event(event))
            try:
                out.append(await asyncio.wait_for(seen, timeout=10) * 1000)
            except asyncio.TimeoutError:
                pass
            del waiting[user]
            await asyncio.sleep(args.gap_ms / 1000)
    finally:
        background.cancel()
        await probe_producer.stop()
        await background_producer.stop()
    return out


async def _background(producer: AIOKafkaProducer, k, per_s: int) -> None:
    """Real-time traffic of other users: ~1 click per 30 impressions, stamped now."""
    rng = random.Random(1)
    n = 0
    tick = 0.01
    while True:
        started = time.monotonic()
        now = int(time.time() * 1000)
        for _ in range(max(1, int(per_s * tick))):
            user = f"bg-{rng.randrange(500)}"
            kind = "click" if rng.random() < 1 / 30 else "impression"
            event = Event(f"bg-{n}", now, user, f"i{rng.randrange(2000):04d}", kind)
            topic = k.clicks_topic if kind == "click" else k.impressions_topic
            await producer.send(topic, key=user.encode(), value=encode_event(event))
            n += 1
        await asyncio.sleep(max(0.0, tick - (time.monotonic() - started)))


def _scrape(port: int) -> dict[str, float]:
    """The worker's Prometheus metrics without labels, name -> value ({} while it is not up)."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return {}
    pairs = (line.partition(" ") for line in text.splitlines() if line and line[0] != "#" and "{" not in line)
    return {name: float(value) for name, _, value in pairs}


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    a = np.asarray(values)
    return {"p50": round(float(np.percentile(a, 50)), 2), "p90": round(float(np.percentile(a, 90)), 2),
            "p99": round(float(np.percentile(a, 99)), 2), "max": round(float(a.max()), 2), "n": int(len(a))}


def _print(r: dict) -> None:
    f = r["freshness_ms"]
    print(f"{r['probes']} probe clicks over {r['background_events_per_s']} background events/s "
          f"(not seen in 10 s: {r['probes_not_seen']}); {r['users_with_table1_states']} users with Table-1 states")
    print(f"{'':<28} {'p50':>9} {'p90':>9} {'p99':>9} {'max':>9}")
    print(f"{'produce -> readable (ms)':<28} {f['p50']:>9} {f['p90']:>9} {f['p99']:>9} {f['max']:>9}")
    labels = {"read_us_first": "rows(user), first (µs)", "read_us_repeat": "rows(user), again (µs)"}
    for key, label in labels.items():
        rd = r[key]
        print(f"{label:<28} {rd['p50']:>9} {rd['p90']:>9} {rd['p99']:>9} {rd['max']:>9}")


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--days", type=int, default=10)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--probes", type=int, default=300)
    parser.add_argument("--gap-ms", type=int, default=50, help="pause between two probes")
    parser.add_argument("--background", type=int, default=1000, help="background events per second")
    parser.add_argument("--reads", type=int, default=20_000)
    parser.add_argument("--timeout", type=float, default=300.0)
    return parser.parse_args()


if __name__ == "__main__":
    main()
