"""Offline training speed and peak memory on CPU: every base with and without the plug-in (SDM / XDM,
SASRec / XDM on SASRec, GRU4Rec, HSTU), and each base's torch-rechub twin when the bench extra is installed.

Each model runs in its own subprocess, so peak RSS (getrusage ru_maxrss) is that model's alone. A child
loads the cached split, takes WARMUP steps, then times STEPS steps of batch BATCH (the offline
trainer's own loop: length-bucketed batches, Trainer.step with progressive validation, or the peers'
loop). It reports training samples/s, the RSS after loading the data, and the peak RSS; the difference
is what training adds. Writes bench/results/train_speed/train_speed.json and prints a table with the ratios to SDM.
Every row trains at the same batch and Le (model.embed_dim 64, the peers' EMBED_DIM); a base's row
names its twin (rechub-sasrec, ...) and its speed relative to it. Without torch-rechub the twin rows
are skipped and the report says so.

    .venv/bin/python bench/train_speed.py [--data LOG_DIR] [--steps 30] [--batch 256] [--cache DIR] [--models sdm,xdm,...]

Without --data it simulates a 2000-user world (5000 items, 14 days, the default per-user behaviour) into
var/bench-world.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results" / "train_speed" / "train_speed.json"
MODELS = ("sdm", "xdm", "sasrec", "xdm-sasrec", "gru4rec", "xdm-gru4rec", "hstu", "xdm-hstu")
PEER_PREFIX = "rechub-"  # a peer's row name: our own bases are called sasrec, gru4rec, hstu too
TWINS = {"sasrec": "sasrec", "xdm-sasrec": "sasrec", "gru4rec": "gru4rec", "xdm-gru4rec": "gru4rec",
         "hstu": "hstu", "xdm-hstu": "hstu"}  # our row -> the torch-rechub peer of the same architecture
WARMUP = 3


def _rss_mib() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(model: str, data_dir: str, steps: int, batch: int, cache: str) -> dict:
    import torch

    from learner.batch import length_buckets
    from learner.data import build_offline_data
    from learner.split import Split

    data = build_offline_data(Split(data_dir, cache_dir=cache), progress=False)
    batches = list(length_buckets(data.train.lengths_view(), batch, random.Random(0)))[: WARMUP + steps]
    batches = [b for b in batches if len(b) == batch]
    rss_data = _rss_mib()
    if model.startswith(PEER_PREFIX):
        from learner.peers import Peer, PeerInputs, full_softmax_loss

        torch.set_num_threads(1)  # what Trainer does for SDM and XDM

        inputs = PeerInputs(data.train)
        peer = Peer(model[len(PEER_PREFIX):], inputs)
        optimizer = torch.optim.Adam(peer.parameters(), lr=1e-3)

        def step(samples):
            loss = full_softmax_loss(peer.scores(samples).clamp(min=-1e9), inputs.labels(samples))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    else:
        from learner.batch import Vocabulary
        from learner.model import config_for
        from learner.trainer import Trainer

        trainer = Trainer(config_for(model), device="cpu", vocab=Vocabulary())

        def step(samples):
            trainer.step(samples)

    for indices in batches[:WARMUP]:
        step([data.train[i] for i in indices])
    started = time.perf_counter()
    timed = 0
    for indices in batches[WARMUP:]:
        step([data.train[i] for i in indices])
        timed += len(indices)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"model": model, "samples": timed, "seconds": round(seconds, 2),
            "samples_per_s": round(timed / seconds, 1), "rss_after_data_mib": round(rss_data, 1),
            "peak_rss_mib": round(peak, 1), "train_added_mib": round(peak - rss_data, 1),
            "torch_threads": torch.get_num_threads()}


def _peer_rows() -> list[str]:
    """The rechub-<name> rows of the twins torch-rechub has, plus its other peers; none without it."""
    try:
        from learner.peers import PEERS, _rechub

        _rechub()
    except Exception:
        return []
    twins = [name for name in dict.fromkeys(TWINS.values()) if name in PEERS]
    return [PEER_PREFIX + name for name in twins + [p for p in PEERS if p not in twins]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="log directory (default: simulate a 2000-user world)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--cache", default=str(ROOT / "var" / "offline-cache"), help="split cache folder")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated rows (sdm first: the ratios' base)")
    parser.add_argument("--out", default=str(RESULTS), help="report file (a smoke run keeps the committed one)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.data, args.steps, args.batch, args.cache)))
        return
    data_dir = args.data
    if data_dir is None:
        data_dir = str(ROOT / "var" / "bench-world")
        if not (Path(data_dir) / "items.csv").exists():
            from replay.simulate import simulate

            simulate(2000, 5000, 14, 1, Path(data_dir))
    from learner.data import build_offline_data
    from learner.split import Split

    build_offline_data(Split(data_dir, cache_dir=args.cache), progress=True)  # once, before the timed children
    peers = _peer_rows()
    models = [m.strip() for m in args.models.split(",") if m.strip()] + peers
    rows = []
    for model in models:
        out = subprocess.run([sys.executable, __file__, "--child", model, "--data", data_dir,
                              "--steps", str(args.steps), "--batch", str(args.batch), "--cache", args.cache],
                             check=True, capture_output=True, text=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = rows[0]
    for row in rows:
        row["speed_vs_sdm"] = round(row["samples_per_s"] / base["samples_per_s"], 3)
        row["train_memory_vs_sdm"] = round(row["train_added_mib"] / base["train_added_mib"], 3) \
            if base["train_added_mib"] > 0 else None
    by_name = {row["model"]: row for row in rows}
    for row in rows:
        twin = by_name.get(PEER_PREFIX + TWINS.get(row["model"], ""))
        if row["model"] in TWINS:
            row["twin"] = PEER_PREFIX + TWINS[row["model"]]
            row["speed_vs_twin"] = round(row["samples_per_s"] / twin["samples_per_s"], 3) if twin else None
    report = {"data": data_dir, "batch": args.batch, "steps": args.steps, "device": "cpu",
              "cpu_count": os.cpu_count(), "python": platform.python_version(),
              "peers": "included" if peers else "skipped: torch-rechub (the bench extra) is not installed",
              "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"{'model':<16}{'samples/s':>11}{'vs SDM':>8}{'vs twin':>9}{'peak RSS MiB':>14}{'train adds MiB':>16}"
          f"{'vs SDM':>8}")
    for row in rows:
        ratio, twin = row["train_memory_vs_sdm"], row.get("speed_vs_twin")
        print(f"{row['model']:<16}{row['samples_per_s']:>11.0f}{row['speed_vs_sdm']:>8.2f}"
              f"{(f'{twin:.2f}' if twin is not None else '-'):>9}{row['peak_rss_mib']:>14.0f}"
              f"{row['train_added_mib']:>16.0f}{(f'{ratio:.2f}' if ratio is not None else '-'):>8}")
    if not peers:
        print("twin rows skipped: torch-rechub (the bench extra) is not installed")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
