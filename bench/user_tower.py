"""The served user tower in process: one batch of users' stored windows -> z, with each item's q_i kept
(serving/item_encodings.py, what the server does) against q_i computed inside the traced tower from the
windows' ids (what it did before), measured in the same run on the same batches.

A 100 k item catalogue with side-info (2,000 leaves, 100 top categories, 5,000 brands, 10,000 shops),
users with Table 1 sized windows (session 5-20, long-term 10-30, unclicked 40-100 behaviours) over its
20,000 most-seen items, an untrained XDM tower (Le 64; weights do not change the cost), one torch
thread as in the compute process. Batches of 1, 4, 8 and 32 users, each batch size timed over every user
several times after a warm-up pass (so the kept table holds the keys, as it does on a warm server).
Alternating the two paths per repeat keeps a slow moment of the machine from landing on one of them.

    .venv/bin/python bench/user_tower.py [--repeats 5] [--out bench/results/user_tower/user_tower.json]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from learner.batch import Batch, Vocabulary, pad_ids
from learner.model import XDM, config_for
from learner.model_store import Tower, VersionInfo
from serving.compiled_tower import compile_tower
from serving.item_encodings import ItemEncodings
from serving.user_vectors import user_vectors
from stream.windows import Behavior, Windows, rows_of
from xdm.records import Item

ROOT = Path(__file__).resolve().parents[1]
ITEMS = 100_000
USERS = 2_000
BATCHES = (1, 4, 8, 32)


class _IdsTower(torch.nn.Module):
    """The previous serving path: ids in, q_i computed inside the traced graph (model.user_vector)."""

    def __init__(self, model: XDM) -> None:
        super().__init__()
        self.model = model

    def forward(self, short: Tensor, short_len: Tensor, long: Tensor, long_len: Tensor, unclicked: Tensor,
                unclicked_len: Tensor, profile: Tensor) -> Tensor:
        rows = short.shape[0]
        return self.model.user_vector(Batch(short, short_len, long, long_len, unclicked, unclicked_len,
                                            torch.zeros(rows, 1, short.shape[2], dtype=short.dtype),
                                            torch.zeros(rows, dtype=short_len.dtype), profile))


def main() -> None:
    args = _args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    tower, traced_ids = _towers()
    users = _users(random.Random(0))
    results: dict = {"items": ITEMS, "users": USERS, "embed_dim": 64, "repeats": args.repeats, "rows": []}
    for size in BATCHES:
        batches = [users[i:i + size] for i in range(0, USERS, size)]
        for batch in batches:  # warm-up: q_i and ids memoised, both graphs run
            user_vectors(tower, batch)
            _ids_path(tower, traced_ids, batch)
        kept, ids = [], []
        for _ in range(args.repeats):
            kept.append(_ms_per_batch(lambda b: user_vectors(tower, b), batches))
            ids.append(_ms_per_batch(lambda b: _ids_path(tower, traced_ids, b), batches))
        row = {"batch": size, "kept_q_ms": float(np.median(kept)), "ids_in_trace_ms": float(np.median(ids))}
        row["ratio"] = row["kept_q_ms"] / row["ids_in_trace_ms"]
        results["rows"].append(row)
        print(f"batch {size:>3}: kept q_i {row['kept_q_ms']:.3f} ms, q_i in the trace {row['ids_in_trace_ms']:.3f} ms, "
              f"ratio {row['ratio']:.2f}", flush=True)
    results["kept_keys"] = len(tower.encodings)
    results["kept_mb"] = round(len(tower.encodings) * 64 * 4 / 2**20, 1)
    z_kept = user_vectors(tower, users[:32])
    z_ids = _ids_path(tower, traced_ids, users[:32])
    results["max_abs_z_difference"] = float(np.abs(z_kept - z_ids).max())
    print(f"kept keys {results['kept_keys']} ({results['kept_mb']} MB); max |z_kept - z_ids| "
          f"{results['max_abs_z_difference']:.1e}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


def _towers() -> tuple[Tower, torch.jit.ScriptModule]:
    cfg = config_for("xdm", embed_dim=64)
    vocab = Vocabulary(cfg.profile_field_names)
    for i in range(ITEMS):
        vocab.add_item(_item(i))
    model = XDM(cfg, vocab.sizes()).eval()
    info = VersionInfo(arm="bench", version=1, collection="bench", tower_uri="", published_ms=0,
                       trained_samples=0, items=ITEMS)
    tower = Tower(model, vocab, info, [], encode=compile_tower(model), encodings=ItemEncodings(model, vocab))
    ids = _ids_inputs(tower, [rows_of(_windows(random.Random(1), 5, 9, 17))] * 4)
    with torch.no_grad():
        traced = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(_IdsTower(model).eval(), ids)))
    return tower, traced


def _ids_path(tower: Tower, traced: torch.jit.ScriptModule, windows: list) -> np.ndarray:
    inputs = _ids_inputs(tower, windows)
    with torch.inference_mode():
        return traced(*inputs).numpy()


def _ids_inputs(tower: Tower, windows: list) -> tuple[Tensor, ...]:
    """The previous path's inputs: every window's keys -> five vocabulary rows (the served memo), padded."""
    ids = tower.encodings.item_ids
    short, long, unclicked = (pad_ids([[ids(key) for _, key in w[i]] for w in windows]) for i in range(3))
    profile = torch.zeros(len(windows), 0, dtype=torch.long)
    return short[0], short[1], long[0], long[1], unclicked[0], unclicked[1], profile


def _ms_per_batch(run, batches: list) -> float:
    started = time.perf_counter()
    for batch in batches:
        run(batch)
    return (time.perf_counter() - started) / len(batches) * 1000


def _users(rng: random.Random) -> list:
    return [rows_of(_windows(rng, rng.randint(5, 20), rng.randint(10, 30), rng.randint(40, 100))) for _ in range(USERS)]


def _windows(rng: random.Random, short: int, long: int, unclicked: int) -> Windows:
    def behaviours(n: int) -> tuple[Behavior, ...]:
        return tuple(Behavior(1_700_000_000_000 + k, _item(rng.randrange(20_000))) for k in range(n))

    return Windows(behaviours(short), behaviours(long), behaviours(unclicked))


def _item(i: int) -> Item:
    return Item(f"i{i}", f"leaf{i % 2000}", f"top{i % 100}", f"brand{i % 5000}", f"shop{i % 10000}")


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed passes over all users per path and batch size")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/user_tower/user_tower.json")
    return parser.parse_args()


if __name__ == "__main__":
    main()
