"""Resident memory of a Recall server's windows replica vs users, for 1, 2 and 4 shards (issue #26 B1).

For each user count N a changelog of N users' states is written to the embedded broker (tansu) with P
partitions, each user's record in the partition the workers write it to (xdm.shards.user_partition): the
states are built by the stream's own rules (stream.windows.apply_event: 14 days of 6-20 clicks and 2x
30-60 impressions a day) and encoded by stream/state_codec, 64 distinct states dealt to the users (each
record still arrives as its own bytes, as in a server). Then, for each shard count S, a fresh child
process builds the server's replica (stream.reader.WindowsReader with serving.shards = S, serving.shard = 0),
reads its partitions to the end, and reports its resident memory growth (VmRSS once caught up and
collected, minus VmRSS before the replica started) and the users and bytes it holds. `ratio` is a
shard's growth over the unsharded replica's at the same N, in the same run: the target is about 1/S.

Writes bench/results/shard_memory/shard_memory.json, shard_memory.md and shard_memory.png.

    .venv/bin/python bench/shard_memory.py [--users 5000,10000,20000,40000] [--shards 1,2,4] [--partitions 8]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from infra.services import start_broker  # noqa: E402
from infra.topics import ensure_topics  # noqa: E402
from stream.topics import changelog_topic  # noqa: E402
from xdm.config import Config, load_config  # noqa: E402
from xdm.shards import user_partition  # noqa: E402

OUT_DIR = ROOT / "bench" / "results" / "shard_memory"
TEMPLATES = 64  # distinct states dealt to the users
T0 = 1_700_000_000_000
DAY_MS = 86_400_000


def main() -> None:
    args = _args()
    if args.child:
        print(json.dumps(asyncio.run(_replica_memory(json.loads(args.child)))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        broker = start_broker(Path(tmp) / "logs")
        try:
            rows, record_bytes = _run(args, broker.address)
        finally:
            broker.stop()
    result = {"machine": platform.machine(), "python": platform.python_version(), "partitions": args.partitions,
              "record_bytes_mean": record_bytes, "rows": rows,
              "command": "bench/shard_memory.py " + " ".join(sys.argv[1:])}
    _write(result, args.out)


def _run(args: argparse.Namespace, bootstrap: str) -> tuple[list[dict], float]:
    states = _states(TEMPLATES, np.random.default_rng(args.seed))
    rows = []
    for n in args.users:
        cfg = _config(bootstrap, args.partitions, f"shard-memory-{n}")
        ensure_topics(cfg)
        started = time.monotonic()
        _write_changelog(cfg, n, states)
        print(f"{n:>7,} users written in {time.monotonic() - started:.1f} s", flush=True)
        base = None
        for shards in args.shards:
            row = _child({"bootstrap": bootstrap, "partitions": args.partitions, "app_id": cfg.stream.app_id,
                          "shards": shards})
            base = row["rss_growth_mb"] if shards == 1 else base
            row |= {"users": n, "shards": shards, "users_share": round(row["held_users"] / n, 3),
                    "ratio": round(row["rss_growth_mb"] / base, 3) if base else None}
            rows.append(row)
            print(f"  S={shards}: holds {row['held_users']:>7,} users ({row['held_mb']:7.1f} MB of records), "
                  f"RSS +{row['rss_growth_mb']:7.1f} MB, {row['ratio']}x of S=1 (target {1 / shards:.2f})", flush=True)
    return rows, round(float(np.mean([len(s) for s in states])))


def _config(bootstrap: str, partitions: int, app_id: str) -> Config:
    return load_config("local", env={}, overrides={"kafka.bootstrap": bootstrap, "kafka.partitions": partitions,
                                                   "stream.app_id": app_id})


def _states(count: int, rng: np.random.Generator) -> list[bytes]:
    from stream.state_codec import encode_state
    from stream.windows import UserState, apply_event
    from xdm.records import Event, Item

    rules = load_config("local", env={}).windows
    out = []
    for s in range(count):
        state, events = UserState(), []
        for day in range(14):
            clicks, shown = int(rng.integers(6, 21)), int(rng.integers(30, 61))
            items = rng.integers(0, 100_000, size=clicks + shown)
            start = T0 + day * DAY_MS
            events += [(start + k * 60_000, items[k], "click") for k in range(clicks)]
            events += [(start + k * 20_000 + r, items[clicks + k], "impression") for k in range(shown) for r in range(2)]
        for k, (ts, i, kind) in enumerate(sorted(events)):
            item = Item(f"i{i}", f"leaf{i % 500}", f"top{i % 20}", f"brand{i % 2000}", f"shop{i % 3000}")
            apply_event(state, Event(f"s{s}-{k}", int(ts), f"s{s}", item.item_id, kind), item, rules)
        out.append(encode_state(state))
    return out


def _write_changelog(cfg: Config, users: int, states: list[bytes]) -> None:
    """Each user's record in the partition a worker would write it to (the events' partition, xdm/shards.py)."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=cfg.kafka.bootstrap, acks="all", linger_ms=5, batch_size=1 << 20,
                             max_request_size=1 << 22)
    topic = changelog_topic(cfg)
    for u in range(users):
        user = f"user-{u}"
        producer.send(topic, key=user.encode(), value=states[u % len(states)],
                      partition=user_partition(user, cfg.kafka.partitions))
    producer.flush(timeout=300)
    producer.close()


def _child(spec: dict) -> dict:
    """One measurement in a fresh process: a heap shaped by an earlier replica would blur the next."""
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                          timeout=900)
    if done.returncode:
        raise RuntimeError(f"child {spec} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


async def _replica_memory(spec: dict) -> dict:
    from stream.reader import WindowsReader
    from xdm.config import apply_overrides

    cfg = apply_overrides(_config(spec["bootstrap"], spec["partitions"], spec["app_id"]),
                          {"serving.shards": spec["shards"], "serving.shard": 0})
    reader = WindowsReader(cfg)
    gc.collect()
    before = _rss_mb()
    started = time.monotonic()
    await reader.start(wait_s=600)
    caught_up_s = time.monotonic() - started
    gc.collect()
    after = _rss_mb()
    values = reader.mirror.values
    held = {"held_users": len(values), "held_mb": round(sum(len(v) for v in values.values()) / 2**20, 1),
            "rss_growth_mb": round(after - before, 1), "caught_up_s": round(caught_up_s, 1),
            "partitions_read": sorted({user_partition(u, cfg.kafka.partitions) for u in values})}
    await reader.stop()
    return held


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def _write(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "shard_memory.json").write_text(json.dumps(result, indent=2))
    lines = ["| users | shards | users held (shard 0) | share of users | records held MB | RSS growth MB "
             "| RSS ratio to 1 shard | target 1/S |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['users']:,} | {r['shards']} | {r['held_users']:,} | {r['users_share']} | {r['held_mb']} "
                     f"| {r['rss_growth_mb']} | {r['ratio']} | {1 / r['shards']:.2f} |")
    text = (f"Windows replica memory vs users ({result['partitions']} changelog partitions, records of "
            f"{result['record_bytes_mean']:,} B on average), `{result['command']}`:\n\n" + "\n".join(lines) + "\n")
    (out / "shard_memory.md").write_text(text)
    print(text)
    _plot(result, out / "shard_memory.png")
    print(f"wrote {out}")


def _plot(result: dict, path: Path) -> None:
    from xdm.plotting import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for shards in sorted({r["shards"] for r in result["rows"]}):
        rows = [r for r in result["rows"] if r["shards"] == shards]
        ax.plot([r["users"] for r in rows], [r["rss_growth_mb"] for r in rows], marker="o", label=f"{shards} shard(s)")
    ax.set_xlabel("users in the changelog")
    ax.set_ylabel("replica RSS growth of one server (MB)")
    ax.set_title("Windows replica memory per server")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=lambda s: [int(x) for x in s.split(",")], default=[5000, 10000, 20000, 40000])
    parser.add_argument("--shards", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4])
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.child and args.shards[0] != 1:
        parser.error("--shards must start with 1: the ratios are to the unsharded replica")
    return args


if __name__ == "__main__":
    main()
