"""A stream worker's resident memory per catalogue item, and what a catalogue lookup costs, for the
catalogue mirror in RocksDB (stream.catalogue_store=rocksdb, the default) against a dict (=memory).

Memory: each (store, size) runs in a fresh child process, so no two share an allocator. The child builds
the worker's catalogue mirror (stream.app.catalogue_values, the worker's own factory) and feeds it N
synthetic item records (ids of 22 characters, side info drawn from 10 k leaves, 100 top categories,
200 k brands, 500 k shops) through TopicMirror's record path, as the worker reads the items topic. It
reports RSS growth (VmRSS after loading minus before, after a gc) per item, the marginal bytes per item
between the two sizes (the fixed costs - RocksDB's memtables and block cache, the cache of decoded
items - cancel out), the peak RSS (VmHWM) and the load rate (items/s a worker catches up at).
Lookups: after loading, each child times `get` (the updater's per-event call) over Zipf-distributed
item ids (a feed's popularity skew: mostly cache hits) and uniform ones (mostly misses: one RocksDB read
and one protobuf decode each), in CPU microseconds per lookup.

Hot path (--hot-path-rounds, 0 to skip): in one process, events per CPU-second of the updater's batch
step (the catalogue lookup as WindowsUpdater._incoming makes it, apply_batch, encode_state) with the
catalogue in each store, the stores alternating round by round, as ratios of medians to `memory`.

Throughput (--throughput): bench/stream_throughput.py's run, one `xdm worker` process at a time on the
same backlog in one broker, for the stores `memory`, `rocksdb` and `rocksdb-nocache` (its decoded-item
cache off: every lookup a RocksDB read and a decode), --throughput-repeats runs each, interleaved:
medians of events/s, events per CPU-second and the worker's RSS at the end, as ratios to `memory` in
the same run, and every run's windows checked against the pure rules. The simulated log names a small
catalogue (3 k items); --throughput-filler more items are produced to the items topic first, so each
worker mirrors a catalogue of that size (and its RSS shows it) while events hit the small one.

Writes bench/results/catalogue_memory/catalogue_memory.{json,md,png} and prints the table. The committed
results come from:

    .venv/bin/python bench/catalogue_memory.py --throughput --throughput-days 2
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aiokafka.structs import ConsumerRecord  # noqa: E402

from stream.app import catalogue_values  # noqa: E402
from stream.mirror import TopicMirror  # noqa: E402
from stream.wire import decode_item, encode_item  # noqa: E402
from xdm.config import Config, StreamConfig, apply_overrides, load_config  # noqa: E402
from xdm.plotting import pyplot  # noqa: E402
from xdm.records import Item  # noqa: E402

OUT = ROOT / "bench" / "results" / "catalogue_memory"
STORES = ("memory", "rocksdb")
TARGET_BYTES_PER_ITEM = 100  # issue #26 B3
PER_EVENT_US = 106  # a worker's measured cost per event (docs/capacity.md §3), to size a lookup against


def synthetic_item(n: int) -> Item:
    """Item n with side info spread like a large catalogue's (many brands and shops, few categories)."""
    leaf = n * 7919 % 10_000
    return Item(f"item-{n:017d}", f"leaf-{leaf:05d}", f"top-{leaf % 100:03d}", f"brand-{n * 104729 % 200_000:06d}",
                f"shop-{n * 15485863 % 500_000:06d}")


# ---- one child: one store, one size


def measure(store: str, n_items: int, lookups: int, cache_items: int, seed: int) -> dict:
    data_dir = Path(tempfile.mkdtemp(prefix="xdm-bench-catalogue-"))
    try:
        return _measure(data_dir, store, n_items, lookups, cache_items, seed)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def _measure(data_dir: Path, store: str, n_items: int, lookups: int, cache_items: int, seed: int) -> dict:
    cfg = apply_overrides(load_config("local", env={}), {
        "stream.data_dir": str(data_dir), "stream.catalogue_store": store,
        "stream.catalogue_cache_items": cache_items})
    mirror = TopicMirror(cfg.kafka, cfg.kafka.items_topic, decode_item, name="catalogue",
                         values=catalogue_values(cfg))
    mirror.get("warm-up")  # opens RocksDB, so its fixed start-up memory is in the baseline
    gc.collect()
    before = _rss_bytes()
    start = time.perf_counter()
    for n in range(n_items):
        _load(mirror, n)
    load_s = time.perf_counter() - start
    gc.collect()
    loaded = _rss_bytes()
    assert len(mirror.values) == n_items, f"{len(mirror.values)} items in the mirror, {n_items} loaded"
    rng = np.random.default_rng(seed)
    zipf_us = _time_lookups(mirror, (rng.zipf(1.2, lookups) - 1) % n_items)
    uniform_us = _time_lookups(mirror, rng.integers(0, n_items, lookups))
    gc.collect()
    return {
        "store": store, "items": n_items, "cache_items": cache_items if store == "rocksdb" else None,
        "rss_before_mb": round(before / 2**20, 1), "rss_loaded_mb": round(loaded / 2**20, 1),
        "rss_after_lookups_mb": round(_rss_bytes() / 2**20, 1), "peak_rss_mb": round(_status_kb("VmHWM") / 2**10, 1),
        "bytes_per_item": round((loaded - before) / n_items, 1),
        "bytes_per_item_after_lookups": round((_rss_bytes() - before) / n_items, 1),
        "load_items_per_s": round(n_items / load_s), "lookup_us_zipf": round(zipf_us, 3),
        "lookup_us_uniform": round(uniform_us, 3), "disk_mb": round(_folder_bytes(data_dir) / 2**20, 1),
    }


def _load(mirror: TopicMirror, n: int) -> None:
    item = synthetic_item(n)
    record = ConsumerRecord(topic=mirror.topic, partition=0, offset=n, timestamp=0, timestamp_type=0,
                            key=item.item_id.encode(), value=encode_item(item), checksum=None,
                            serialized_key_size=0, serialized_value_size=0, headers=())
    mirror._apply(record)  # the mirror's own path for one record: decode, validate, store


def _time_lookups(mirror: TopicMirror, rows: np.ndarray, chunk: int = 1000) -> float:
    # ids are made a chunk at a time: a list of all of them would outlive the timing in the allocator's
    # arenas (pinned there by the cached items made in between) and show up as the store's memory
    values, seconds = mirror.values, 0.0
    for first in range(0, len(rows), chunk):
        ids = [f"item-{n:017d}" for n in rows[first:first + chunk].tolist()]
        start = time.process_time()  # CPU time: the other load on the box changes it less than wall time
        for item_id in ids:
            values.get(item_id)
        seconds += time.process_time() - start
    return seconds / len(rows) * 1e6


def _rss_bytes() -> int:
    return _status_kb("VmRSS") * 1024


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# ---- the parent


def main() -> None:
    args = _args()
    if args.child:
        print(json.dumps(measure(args.child, args.sizes[0], args.lookups, args.cache_items, args.seed)))
        return
    rows = [_child(store, n, args) for n in args.sizes for store in STORES]
    result = {"machine": platform.machine(), "cores": len(os.sched_getaffinity(0)), "sizes": args.sizes,
              "lookups": args.lookups, "cache_items": args.cache_items, "rows": rows,
              "marginal_bytes_per_item": _marginal(rows, args.sizes),
              "target_bytes_per_item": TARGET_BYTES_PER_ITEM}
    if args.hot_path_rounds:
        result["hot_path"] = hot_path(args)
        print(f"hot path: { {k: v['ratio_to_memory'] for k, v in result['hot_path']['sets'].items()} }", flush=True)
    if args.throughput:
        result["throughput"] = throughput(args)
    result["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "catalogue_memory.json").write_text(json.dumps(result, indent=2) + "\n")
    (OUT / "catalogue_memory.md").write_text(markdown(result))
    _plot(result, OUT / "catalogue_memory.png")
    print(markdown(result))


def _child(store: str, n_items: int, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--child", store, "--sizes", str(n_items), "--lookups", str(args.lookups),
               "--cache-items", str(args.cache_items), "--seed", str(args.seed)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{store} at {n_items} items failed:\n{done.stderr[-3000:]}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{store:>8} {n_items:>10,} items: {row['bytes_per_item']:>7.1f} B/item, "
          f"{row['lookup_us_uniform']:.2f} µs/lookup (uniform)", flush=True)
    return row


def _marginal(rows: list[dict], sizes: list[int]) -> dict[str, float] | None:
    """Bytes per extra item between the smallest and the largest size: the store's growth rate."""
    if len(sizes) < 2:
        return None
    small, large = min(sizes), max(sizes)
    out = {}
    for store in STORES:
        by_size = {r["items"]: r for r in rows if r["store"] == store}
        growth = by_size[large]["rss_loaded_mb"] - by_size[small]["rss_loaded_mb"]
        growth += by_size[small]["rss_before_mb"] - by_size[large]["rss_before_mb"]
        out[store] = round(growth * 2**20 / (large - small), 1)
    return out


# ---- the updater's hot path, in one process


def hot_path(args: argparse.Namespace) -> dict:
    """Events per CPU-second of the worker's batch step (catalogue lookup as WindowsUpdater._incoming does
    it, apply_batch, encode_state of each written user) over a simulated log, with the catalogue in a dict
    or in RocksDB, each holding --throughput-filler items besides the log's; stores alternate round by
    round. Two event sets: the log's own (3 k items: every lookup a cache hit once warm) and the same
    events with each item redrawn from the whole catalogue by Zipf(1.2) popularity (misses happen)."""
    from dataclasses import replace

    from replay.simulate import simulate
    from xdm.log_format import read_events, read_items

    root = Path(tempfile.mkdtemp(prefix="xdm-bench-catalogue-hot-"))
    cfg = load_config("local", env={})
    try:
        simulate(args.throughput_users, 3000, args.throughput_days, args.seed, root / "log", progress=False)
        log_events, items = list(read_events(root / "log")), read_items(root / "log")
        ranks = (np.random.default_rng(args.seed).zipf(1.2, len(log_events)) - 1) % args.throughput_filler
        event_sets = {"log items": log_events,
                      "zipf over catalogue": [replace(e, item_id=f"item-{n:017d}")
                                              for e, n in zip(log_events, ranks.tolist())]}
        stores = {"memory": ("memory", 0), "rocksdb": ("rocksdb", args.cache_items), "rocksdb-nocache": ("rocksdb", 0)}
        catalogues = {name: _filled(cfg, root / name, store, cache_items, args.throughput_filler, items)
                      for name, (store, cache_items) in stores.items()}
        rates = {(events, name): [] for events in event_sets for name in stores}
        for _ in range(args.hot_path_rounds):
            for events_name, events in event_sets.items():
                for name, values in catalogues.items():
                    rates[events_name, name].append(_batch_step_rate(events, values, cfg))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    out: dict = {"events": len(log_events), "filler_items": args.throughput_filler, "rounds": args.hot_path_rounds,
                 "cache_items": args.cache_items, "sets": {}}
    for events_name in event_sets:
        medians = {name: float(np.median(rates[events_name, name])) for name in stores}
        out["sets"][events_name] = {
            "events_per_cpu_s": {name: [round(x) for x in rates[events_name, name]] for name in stores},
            "ratio_to_memory": {name: round(m / medians["memory"], 3) for name, m in medians.items()}}
    return out


def _filled(cfg: Config, data_dir: Path, store: str, cache_items: int, filler: int, items: dict[str, Item]):
    values = catalogue_values(apply_overrides(cfg, {
        "stream.data_dir": str(data_dir), "stream.catalogue_store": store, "stream.catalogue_cache_items": cache_items}))
    for n in range(filler):
        item = synthetic_item(n)
        values[item.item_id] = item
    for item_id, item in items.items():
        values[item_id] = item
    return values


def _batch_step_rate(events: list, values, cfg: Config) -> float:
    from stream.batch import Incoming, apply_batch
    from stream.state_codec import encode_state
    from stream.windows import UserState

    states: dict[bytes, UserState] = {}
    start = time.process_time()
    for first in range(0, len(events), cfg.stream.batch_max):
        batch = [Incoming(e.user_id.encode(), e, values.get(e.item_id) or Item(e.item_id))
                 for e in events[first:first + cfg.stream.batch_max]]
        result = apply_batch(batch, lambda key, _: states.setdefault(key, UserState()), cfg.windows, cfg.samples)
        for update in result.updates:
            if update.write:
                encode_state(update.state)
    return len(events) / (time.process_time() - start)


# ---- events/s of the real worker, one run


def throughput(args: argparse.Namespace) -> dict:
    """bench/stream_throughput.py's workers, one per catalogue store, over one backlog in one broker."""
    sys.path.insert(0, str(ROOT / "bench"))
    import stream_throughput as bench  # the throughput bench's run: one of it, not a copy
    from infra.services import start_broker
    from infra.topics import ensure_topics
    from replay.producer import produce_log
    from replay.simulate import simulate

    stores = {
        "memory": {"stream.catalogue_store": "memory"},
        "rocksdb": {"stream.catalogue_store": "rocksdb"},
        "rocksdb-nocache": {"stream.catalogue_store": "rocksdb", "stream.catalogue_cache_items": 0},
    }
    # each run is its own app id (its own group, table and changelog); repeats interleave the stores, so
    # a drift of the box's load over the run falls on all of them alike
    runs = [(f"catalogue-{store}-{k}", store) for k in range(args.throughput_repeats) for store in stores]
    bench.VARIANTS.update({name: stores[store] for name, store in runs})
    root = Path(tempfile.mkdtemp(prefix="xdm-bench-catalogue-throughput-"))
    summary = simulate(args.throughput_users, 3000, args.throughput_days, args.seed, root / "log", progress=False)
    broker = start_broker(root / "logs")
    try:
        base = load_config("local", env={}, overrides={"kafka.bootstrap": broker.address, "kafka.partitions": 4})
        ensure_topics(base)
        _produce_filler(base, args.throughput_filler)
        produced = produce_log(base.kafka, root / "log", progress=False)
        reference = bench._reference(root / "log", base)
        rows = []
        for name, store in runs:
            row = bench._run_variant(name, base, root, produced.events, produced.events, reference, args.timeout)
            rows.append({"store": store, **row})
            print(f"{name}: {row['events_per_s']:,} events/s, {row['events_per_cpu_s']:,} events/cpu-s, "
                  f"RSS {row['rss_mb_at_end']} MB", flush=True)
    finally:
        broker.stop()
        shutil.rmtree(root, ignore_errors=True)
    return {"events": summary.events, "filler_items": args.throughput_filler, "repeats": args.throughput_repeats,
            "rows": rows, "by_store": _ratios(rows, list(stores))}


def _ratios(rows: list[dict], stores: list[str]) -> dict[str, dict]:
    """Per store: median events/s, events per CPU-second and worker RSS over its runs, as ratios to memory."""
    medians = {}
    for store in stores:
        mine = [r for r in rows if r["store"] == store]
        medians[store] = {key: float(np.median([r[key] for r in mine]))
                          for key in ("events_per_s", "events_per_cpu_s", "rss_mb_at_end")}
    memory = medians["memory"]
    for values in medians.values():
        values["events_per_s_ratio"] = round(values["events_per_s"] / memory["events_per_s"], 3)
        values["events_per_cpu_s_ratio"] = round(values["events_per_cpu_s"] / memory["events_per_cpu_s"], 3)
    return medians


def _produce_filler(cfg: Config, n_items: int) -> None:
    """Items no event names, so the worker's mirror has a large catalogue to look the small one up in."""
    from kafka import KafkaProducer

    from xdm.client_security import kafka_client_kwargs

    producer = KafkaProducer(**kafka_client_kwargs(cfg.kafka, "kafka-python"), linger_ms=20,
                             batch_size=262_144)
    try:
        for n in range(n_items):
            item = synthetic_item(n)
            producer.send(cfg.kafka.items_topic, key=item.item_id.encode(), value=encode_item(item))
        producer.flush(timeout=120)
    finally:
        producer.close(timeout=10)


# ---- report


def markdown(result: dict) -> str:
    lines = ["| store | items | RSS growth, B/item | after lookups, B/item | peak RSS, MB | load, items/s "
             "| lookup CPU µs (zipf) | lookup CPU µs (uniform) | on disk, MB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['store']} | {r['items']:,} | {r['bytes_per_item']:.0f} | "
                     f"{r['bytes_per_item_after_lookups']:.0f} | {r['peak_rss_mb']:.0f} | {r['load_items_per_s']:,} | "
                     f"{r['lookup_us_zipf']:.2f} | {r['lookup_us_uniform']:.2f} | {r['disk_mb']:.0f} |")
    marginal = result.get("marginal_bytes_per_item")
    if marginal:
        lines.append("")
        lines.append("Marginal bytes per item between the sizes: " + ", ".join(
            f"{store} {value:.0f}" for store, value in marginal.items()) +
                     f" (target ≤ {result['target_bytes_per_item']} B/item).")
    lines.append(f"A lookup is set against the ~{PER_EVENT_US} µs a worker spends per event (docs/capacity.md §3).")
    hot = result.get("hot_path")
    if hot:
        lines += ["", f"The updater's batch step in one process ({hot['events']:,} events, catalogue of "
                  f"{hot['filler_items']:,} + 3,000 items, {hot['cache_items']:,} decoded items cached, "
                  f"{hot['rounds']} alternating rounds): events per CPU-second, ratio of medians to memory:", "",
                  "| events' items | " + " | ".join(next(iter(hot["sets"].values()))["ratio_to_memory"]) + " |",
                  "|---|" + "---:|" * len(next(iter(hot["sets"].values()))["ratio_to_memory"])]
        for events_name, figures in hot["sets"].items():
            lines.append(f"| {events_name} | " + " | ".join(f"{r:.3f}" for r in figures["ratio_to_memory"].values())
                         + " |")
    tp = result.get("throughput")
    if tp:
        lines += ["", f"Worker throughput, one run: {tp['events']:,} events, {tp['filler_items']:,} extra catalogue "
                  f"items, {tp['repeats']} runs a store, interleaved; medians:", "",
                  "| catalogue store | events/s | events/cpu-s | worker RSS, MB | ratio to memory (events/s) "
                  "| ratio (events/cpu-s) |", "|---|---:|---:|---:|---:|---:|"]
        for store, m in tp["by_store"].items():
            lines.append(f"| {store} | {m['events_per_s']:,.0f} | {m['events_per_cpu_s']:,.0f} | "
                         f"{m['rss_mb_at_end']:.0f} | {m['events_per_s_ratio']:.3f} | {m['events_per_cpu_s_ratio']:.3f} |")
        differing = sorted({r.get("users_differing_from_rules") for r in tp["rows"]}, key=str)
        lines.append(f"\nUsers whose windows differ from the rules' (every run): {differing}.")
    lines.append(f"\nLoad average (1 min) at the end: {result['load_average_1m_at_end']}.")
    return "\n".join(lines) + "\n"


def _plot(result: dict, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for store in STORES:
        rows = sorted((r for r in result["rows"] if r["store"] == store), key=lambda r: r["items"])
        # after the lookups: RocksDB's block cache and the cache of decoded items are full by then
        ax.plot([r["items"] for r in rows], [r["rss_after_lookups_mb"] - r["rss_before_mb"] for r in rows],
                marker="o", label=f"catalogue in {store}")
    sizes = result["sizes"]
    ax.plot(sizes, [n * TARGET_BYTES_PER_ITEM / 2**20 for n in sizes], linestyle="--", color="grey",
            label=f"{TARGET_BYTES_PER_ITEM} B/item")
    ax.set_xscale("log")
    ax.set_xlabel("catalogue items")
    ax.set_ylabel("RSS growth after loading and lookups (MB)")
    ax.set_title("Catalogue mirror: resident memory")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--lookups", type=int, default=200_000)
    parser.add_argument("--cache-items", type=int, default=StreamConfig.catalogue_cache_items,
                        help="stream.catalogue_cache_items")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600.0, help="per child / worker (s)")
    parser.add_argument("--throughput", action="store_true", help="also run the worker throughput comparison")
    parser.add_argument("--throughput-users", type=int, default=1000)
    parser.add_argument("--throughput-days", type=int, default=4)
    parser.add_argument("--throughput-filler", type=int, default=1_000_000)
    parser.add_argument("--throughput-repeats", type=int, default=2)
    parser.add_argument("--hot-path-rounds", type=int, default=3, help="0: skip the in-process hot-path comparison")
    parser.add_argument("--child", choices=STORES, help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    main()
