"""Bytes of stored state per user (stream/state_codec.py) at the papers' Table-1 window lengths.

Replays a simulated log whose windows at sample time average near SRU2B Table 1 (the simulator's
defaults: 2000 users, 14 days) through the stream's own rules, and measures the encoded state of the
user at every training sample (what the worker writes to RocksDB and the changelog at that moment)
and at the end of the log. Also times encode and decode at those sizes. Writes
bench/results/state_size/state_size.json and prints a table.

    .venv/bin/python bench/state_size.py [--users 2000 --days 14]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from replay.simulate import simulate  # noqa: E402
from replay.stats import PAPER_TABLE1  # noqa: E402
from stream.samples import step  # noqa: E402
from stream.state_codec import decode_state, encode_state  # noqa: E402
from stream.windows import UserState  # noqa: E402
from xdm.config import load_config  # noqa: E402
from xdm.log_format import read_events, read_items  # noqa: E402
from xdm.records import Item  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "state_size" / "state_size.json"


def main() -> None:
    args = _args()
    cfg = load_config("local", env={})
    log_dir = Path(tempfile.mkdtemp(prefix="xdm-bench-state-")) / "log"
    simulate(args.users, args.items, args.days, args.seed, log_dir, progress=False)
    items = read_items(log_dir)
    states: dict[str, UserState] = {}
    at_sample: list[int] = []
    rows_at_sample: list[int] = []
    lengths = np.zeros(3)
    samples = 0
    for event in read_events(log_dir):
        state = states.setdefault(event.user_id, UserState())
        result = step(state, event, items.get(event.item_id) or Item(event.item_id), cfg.windows, cfg.samples)
        for sample in result.samples:
            samples += 1
            w = sample.windows
            lengths += (len(w.short), len(w.long), len(w.unclicked))
            if samples % args.every == 0:
                at_sample.append(len(encode_state(state)))
                rows_at_sample.append(len(state.clicks) + len(state.impressions))
    final = [len(encode_state(s)) for s in states.values()]
    codec = _time_codec(list(states.values()))
    result = {
        "log": {"users": args.users, "items": args.items, "days": args.days, "seed": args.seed},
        "samples": samples,
        "avg_windows_at_sample": dict(zip(("short", "long", "unclicked"), np.round(lengths / max(samples, 1), 2))),
        "paper_table1_taobao": {k.removeprefix("avg_"): v[0] for k, v in PAPER_TABLE1.items()},
        "bytes_at_sample": _summary(at_sample),
        "rows_at_sample": _summary(rows_at_sample),
        "bytes_per_user_at_end": _summary(final),
        "codec_us_at_end_states": codec,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    _print(result)


def _summary(values: list[int]) -> dict[str, float]:
    a = np.asarray(values, dtype=float)
    if not len(a):
        return {}
    return {"n": int(len(a)), "mean": round(float(a.mean())), "p50": round(float(np.percentile(a, 50))),
            "p90": round(float(np.percentile(a, 90))), "p99": round(float(np.percentile(a, 99))),
            "max": int(a.max())}


def _time_codec(states: list[UserState]) -> dict[str, float]:
    blobs = [encode_state(s) for s in states]
    t = time.perf_counter()
    for s in states:
        encode_state(s)
    encode_us = (time.perf_counter() - t) / len(states) * 1e6
    t = time.perf_counter()
    for b in blobs:
        decode_state(b)
    decode_us = (time.perf_counter() - t) / len(blobs) * 1e6
    return {"encode_mean_us": round(encode_us, 1), "decode_mean_us": round(decode_us, 1)}


def _print(r: dict) -> None:
    w = r["avg_windows_at_sample"]
    p = r["paper_table1_taobao"]
    print(f"{r['samples']:,} samples; windows at sample time: short {w['short']}, long {w['long']}, "
          f"unclicked {w['unclicked']} (Table 1 Taobao: {p['short']}, {p['long']}, {p['unclicked']})")
    print(f"{'state bytes':<22} {'mean':>8} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8}")
    for key in ("bytes_at_sample", "bytes_per_user_at_end", "rows_at_sample"):
        s = r[key]
        print(f"{key:<22} {s['mean']:>8,} {s['p50']:>8,} {s['p90']:>8,} {s['p99']:>8,} {s['max']:>8,}")
    c = r["codec_us_at_end_states"]
    print(f"codec at the end states: encode {c['encode_mean_us']} µs, decode {c['decode_mean_us']} µs (mean)")


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--every", type=int, default=10, help="measure the state at every n-th sample")
    return parser.parse_args()


if __name__ == "__main__":
    main()
