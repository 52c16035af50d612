"""Full garbage-collection pause of a Recall server's process against the number of users it has cached.

A full (generation-2) collection walks every object the collector tracks while the whole server waits,
so a cache that holds many tracked objects a user turns into pauses that grow with the cache. The
windows reader (stream/reader.py) caches each read user's windows as stored rows, plain tuples the
collector stops tracking; the baseline in the same run holds the same users' windows as Windows /
Behavior records, as the reader did before. For each size, in this process: tracked objects and the
fastest of five full collections, with only the reader's cache, then with the records held as well.
The records share Items through `stream.windows.item_of` (at most 65,536 kept); the server reads rows
and builds no records or Items.

Users get Table-1 sized windows (13 session clicks, 21 long-term clicks, 71 unclicked items) over a
100,000-item catalogue, encoded and decoded by the workers' state codec.

    .venv/bin/python bench/gc_pause.py [--users 2000,10000] [--out bench/results/gc_pause/gc_pause.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stream.reader import WindowsReader  # noqa: E402
from stream.state_codec import encode_state  # noqa: E402
from stream.windows import UserState, apply_event  # noqa: E402
from xdm.config import load_config  # noqa: E402
from xdm.records import Event, Item  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "gc_pause" / "gc_pause.json"
ITEMS = 100_000
T0 = 1_700_000_000_000


def main() -> None:
    args = _args()
    if args.child:
        print(json.dumps(_size(args.child)))
        return
    rows = []
    for n in args.users:  # one fresh process a size: a heap shaped by an earlier size moved pauses 2x
        child = subprocess.run([sys.executable, __file__, "--child", str(n)], capture_output=True, text=True,
                               check=True)
        row = json.loads(child.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{n:>6} users: rows cache {row['cache_tracked']:>9,} tracked, full gc {row['cache_full_gc_ms']:7.2f} ms"
              f" | as records {row['records_tracked']:>9,} tracked, full gc {row['records_full_gc_ms']:7.2f} ms"
              f" | {row['pause_ratio']}x")
    out = {"machine": platform.machine(), "python": platform.python_version(), "items": ITEMS, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


def _size(n: int) -> dict:
    cfg = load_config("local", env={})
    reader = WindowsReader(cfg, cache_users=n)
    gc.collect()
    gc.freeze()  # as the server does after start-up: what is measured is what came after
    rng = np.random.default_rng(0)
    for u in range(n):
        reader.mirror.values[f"u{u}"] = encode_state(_state(f"u{u}", rng, cfg.windows))
        reader.rows(f"u{u}")  # fills the reader's cache, as the server's requests do
    cache_only = _measure()
    records = {f"u{u}": reader.windows(f"u{u}") for u in range(n)}  # the baseline: what the cache held
    with_records = _measure()
    del records
    return {"users": n, "cache_tracked": cache_only[0], "cache_full_gc_ms": cache_only[1],
            "records_tracked": with_records[0], "records_full_gc_ms": with_records[1],
            "pause_ratio": round(with_records[1] / max(cache_only[1], 0.01))}


def _state(user: str, rng: np.random.Generator, rules) -> UserState:
    state = UserState()
    items = rng.integers(0, ITEMS, size=105)
    session = T0 + 30 * 3_600_000
    events = [(T0 + k * 3_600_000, items[k], "click") for k in range(21)]
    events += [(session + k * 60_000, items[21 + k], "click") for k in range(13)]
    events += [(session + k * 1000 + r, items[34 + k], "impression") for k in range(71) for r in range(2)]
    for k, (ts, i, kind) in enumerate(sorted(events)):
        item = Item(f"i{i}", f"leaf{i % 500}", f"top{i % 20}", f"brand{i % 2000}", f"shop{i % 3000}")
        apply_event(state, Event(f"{user}-{k}", int(ts), user, item.item_id, kind), item, rules)
    return state


def _measure() -> tuple[int, float]:
    """(tracked objects, fastest of five full collections in ms); the first collections also untrack
    the new tuples, one level of nesting each, so they are not timed."""
    for _ in range(4):
        gc.collect()
    pauses = []
    for _ in range(5):
        started = time.perf_counter()
        gc.collect()
        pauses.append(time.perf_counter() - started)
    return len(gc.get_objects()), round(min(pauses) * 1000, 2)


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=lambda s: [int(x) for x in s.split(",")], default=[2000, 10000])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    main()
