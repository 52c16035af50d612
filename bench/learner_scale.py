"""The learner's step time against the catalogue size: today's code (re-rank every item, validate on every
item) beside the new one (ranks kept incrementally, sampled validation), in one run, on CPU.

One step here is what Trainer.step costs apart from collating: follow the counts of the step's labels
(new: `LogUniformSampler.set_counts` on the rows counted; old: `rerank_every_item_baseline`, a copy of the
sampler's update_counts before #26 B2, fed a copy of the vocabulary's count list as the trainer did),
draw the negatives and look up log Q of the batch, progressive validation (new: the trainer's dispatch,
exact up to learner.validation_full_max_items, sampled above; old: `validate_every_item`, B x N scores),
and the model's update (forward, backward, clipping, AdaGrad).

Synthetic data: Zipf-like counts over N items (count ~ 10^6 / rank^0.8), batches of 256 samples with
the papers' Table-1 window lengths (13 short, 21 long, 71 unclicked behaviours, 5 labels) over a 5 k-item
pool, the default model (embed_dim 64, 1000 negatives), a random N x 64 output table for validation.
What could not run on this 24 GB machine, and what was done instead (the report says it again):
- the old validation scores B x N at once: 10 GB at 10 M items, 31 GB at 30 M, so it is measured at the
  sizes up to 1 M and extrapolated linearly (per item) to 10 M and 30 M, marked as such;
- the model update holds two N x 64 item tables, their dense gradients and AdaGrad sums (30 M: ~46 GB),
  so it is measured at item tables of 10 k, 100 k and 1 M rows; each step row adds the model update at a
  fixed 10 k-row table, and the update's own growth with the table is reported beside it (it is not
  flat: the item tables get dense gradients and a dense AdaGrad update).

    .venv/bin/python bench/learner_scale.py [--sizes 10000,1000000,10000000,30000000] [--steps 20] [--old-steps 2]

Writes bench/results/learner_scale/learner_scale.json, .md and .png; prints the markdown.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import random
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from learner.batch import collate  # noqa: E402
from learner.model import config_for  # noqa: E402
from learner.progressive import validate_every_item  # noqa: E402
from learner.sampler import LogUniformSampler  # noqa: E402
from learner.trainer import Trainer  # noqa: E402
from stream.samples import Sample  # noqa: E402
from stream.windows import Behavior, Windows  # noqa: E402
from xdm.plotting import pyplot  # noqa: E402
from xdm.records import Item  # noqa: E402

OUT = ROOT / "bench" / "results" / "learner_scale"
BATCH = 256
SHORT, LONG, UNCLICKED, LABELS = 13, 21, 71, 5  # Table 1 (avg_short, avg_long, avg_unclicked), k = 5 labels
POOL = 5_000  # items the synthetic samples use (below the smallest table measured)
MODEL_TABLES = (10_000, 100_000, 1_000_000)  # item-table rows the model update is measured at
STEP_TABLE = 10_000  # the model update added to every step row is the one at this table size
OLD_VALIDATION_MAX = 1_000_000  # above, the old validation's B x N scores do not fit in memory


# ---- today's sampler update, kept here as the baseline (learner/sampler.py before #26 B2)

class rerank_every_item_baseline:  # noqa: N801 - named for what it does, as the report names it
    """LogUniformSampler as it was: every update_counts argsorts all N counts and rebuilds both maps."""

    def __init__(self, counts) -> None:
        self.update_counts(counts)

    def update_counts(self, counts) -> None:
        counts_t = torch.as_tensor(counts, dtype=torch.float64).flatten()
        n = counts_t.numel() - 1
        self._rank_to_row = torch.argsort(-counts_t[1:], stable=True) + 1
        self._row_to_rank = torch.empty(n + 1, dtype=torch.long)
        self._row_to_rank[0] = -1
        self._row_to_rank[self._rank_to_row] = torch.arange(n)
        r = torch.arange(n, dtype=torch.float64)
        self._log_p = torch.log(torch.log(r + 2) - torch.log(r + 1)) - math.log(math.log(n + 1))

    def sample(self, j: int, generator: torch.Generator | None = None):
        n = self._rank_to_row.numel()
        u = torch.rand(j, generator=generator, dtype=torch.float64)
        ranks = (torch.floor(torch.exp(u * math.log(n + 1))) - 1).long().clamp_(0, n - 1)
        return self._rank_to_row[ranks], self._log_p[ranks].float()

    def log_q(self, ids: torch.Tensor) -> torch.Tensor:
        n = self._rank_to_row.numel()
        flat = ids.flatten()
        ranks = self._row_to_rank[flat.clamp(0, n)]
        out = torch.where(flat == 0, torch.zeros((), dtype=torch.float64), self._log_p[ranks.clamp(min=0)])
        return out.float().reshape(ids.shape)


# ---- synthetic inputs

def _item(i: int) -> Item:
    return Item(f"i{i}", f"leaf{i % 997}", f"top{i % 31}", f"brand{i % 4999}", f"shop{i % 9973}")


def synthetic_batch(rng: random.Random, serial: int) -> list[Sample]:
    def behaviours(n: int, ts: int) -> tuple[Behavior, ...]:
        return tuple(Behavior(ts - 1000 + k, _item(int(POOL * rng.random() ** 2))) for k in range(n))

    out = []
    for b in range(BATCH):
        ts = 1_000_000 + serial * BATCH + b
        windows = Windows(behaviours(SHORT, ts), behaviours(LONG, ts), behaviours(UNCLICKED, ts))
        out.append(Sample(f"s{serial}-{b}", f"u{b}", ts, windows, behaviours(LABELS, ts + 10)))
    return out


def zipf_counts(n: int, seed: int) -> list[int]:
    """Counts per row 0..N (row 0 padding): ~10^6 / rank^0.8 over a random order of the rows."""
    rng = np.random.default_rng(seed)
    counts = np.floor(1e6 / np.arange(1, n + 1, dtype=np.float64) ** 0.8).astype(np.int64)
    rng.shuffle(counts)
    return [0, *counts.tolist()]


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds of `repeats` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


# ---- the parts of a step

def sampler_parts(n: int, steps: int, old_steps: int, trainer: Trainer, batch) -> dict:
    """Seconds per step to follow the counts, draw the negatives and look up log Q: new and old."""
    counts = zipf_counts(n, seed=n)
    rng = np.random.default_rng(1)
    started = time.perf_counter()
    new = LogUniformSampler(counts)
    build_s = time.perf_counter() - started
    ids = batch.labels[..., 0] % n + 1  # the batch's label rows, as ids of this catalogue
    j = trainer.model.cfg.n_negatives

    def labels_of_a_step() -> list[int]:  # 256 x 5 label rows, drawn by popularity (the sampler's law)
        rows = new.sample(BATCH * LABELS, torch.Generator().manual_seed(int(rng.integers(2**31))))[0].tolist()
        for row in rows:
            counts[row] += 1
        return rows

    def new_step() -> None:
        rows = sorted(set(labels_of_a_step()))
        new.set_counts(rows, [counts[r] for r in rows])
        new.sample(j)
        new.log_q(ids)

    new_s = timed(new_step, steps)
    del new
    gc.collect()
    old = rerank_every_item_baseline(counts)

    def old_step() -> None:
        labels_of_a_step_old()
        old.update_counts(list(counts))  # the trainer passed vocab.counts, a fresh list copy
        old.sample(j)
        old.log_q(ids)

    def labels_of_a_step_old() -> None:
        for row in old.sample(BATCH * LABELS)[0].tolist():
            counts[row] += 1

    old_s = timed(old_step, old_steps)
    del old, counts
    gc.collect()
    return {"new_s": new_s, "old_s": old_s, "new_build_s": build_s}


def validation_parts(n: int, steps: int, old_steps: int, trainer: Trainer, batch) -> dict:
    """Seconds of progressive validation against an N x 64 output table: new (the trainer's) and old."""
    model = trainer.model
    kept = model.item_out.weight
    dim = kept.shape[1]
    model.item_out.weight = torch.nn.Parameter(torch.empty(n + 1, dim).normal_(0.0, 0.05), requires_grad=False)
    with torch.no_grad():
        model.item_out.weight[: kept.shape[0]] = kept
    model.eval()
    new_s = timed(lambda: trainer.progressive_validation(batch), max(3, steps // 4))
    old_s = timed(lambda: validate_every_item(model, batch), old_steps) if n <= OLD_VALIDATION_MAX else None
    model.item_out.weight = kept
    gc.collect()
    return {"new_s": new_s, "old_s": old_s}


def model_update_s(trainer: Trainer, batch, rows: int, steps: int) -> float:
    """Seconds of Trainer.step's update (forward, loss, backward, clipping, AdaGrad) with item tables of `rows`."""
    trainer.model.grow_to({"item": rows + 1})
    trainer.optimizer = trainer._adagrad(trainer.lr)
    sampler = LogUniformSampler(zipf_counts(rows, seed=rows))

    def update() -> None:  # as Trainer.step does it after validation
        trainer.model.train()
        parts = trainer.model.calculate_loss(batch, sampler, trainer.generator, step=trainer.steps)
        trainer.optimizer.zero_grad(set_to_none=True)
        parts.total.backward()
        torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), trainer.clip_norm)
        trainer.optimizer.step()

    update()  # AdaGrad's state is allocated on the first step
    return timed(update, steps)


# ---- the run

def run(sizes: list[int], steps: int, old_steps: int) -> dict:
    torch.manual_seed(0)
    trainer = Trainer(config_for("xdm"), device="cpu")  # the default model: embed_dim 64, 1000 negatives
    rng = random.Random(0)
    for serial in range(2):  # fill the vocabulary with the pool's items
        trainer.step(synthetic_batch(rng, serial))
    batch = collate(synthetic_batch(rng, 99), trainer.vocab, grow=False)

    model_rows = []
    for rows in MODEL_TABLES:
        fresh = Trainer(config_for("xdm"), device="cpu", vocab=trainer.vocab)
        fresh.model.load_state_dict(trainer.model.state_dict())
        model_rows.append({"table_rows": rows, "update_s": model_update_s(fresh, batch, rows, max(3, steps // 3))})
        print(f"model update, {rows:,} rows: {model_rows[-1]['update_s']:.3f} s", flush=True)
        del fresh
        gc.collect()
    update_at_step_table = next(r["update_s"] for r in model_rows if r["table_rows"] == STEP_TABLE)
    per_item_update = ((model_rows[-1]["update_s"] - model_rows[0]["update_s"])
                       / (model_rows[-1]["table_rows"] - model_rows[0]["table_rows"]))

    rows_out = []
    for n in sizes:
        sampler = sampler_parts(n, steps, old_steps, trainer, batch)
        validation = validation_parts(n, steps, old_steps, trainer, batch)
        rows_out.append({"items": n, "sampler": sampler, "validation": validation})
        old_validation = "-" if validation["old_s"] is None else f"{validation['old_s'] * 1e3:.1f} ms"
        print(f"{n:,} items: sampler new {sampler['new_s'] * 1e3:.1f} ms old {sampler['old_s'] * 1e3:.1f} ms; "
              f"validation new {validation['new_s'] * 1e3:.1f} ms old {old_validation}", flush=True)

    measured = [r for r in rows_out if r["validation"]["old_s"] is not None]
    small, large = measured[0], measured[-1]
    per_item_validation = ((large["validation"]["old_s"] - small["validation"]["old_s"])
                           / max(1, large["items"] - small["items"]))
    for r in rows_out:
        v = r["validation"]
        v["old_extrapolated"] = v["old_s"] is None
        if v["old_s"] is None:
            v["old_s"] = large["validation"]["old_s"] + per_item_validation * (r["items"] - large["items"])
        r["new_step_s"] = r["sampler"]["new_s"] + v["new_s"] + update_at_step_table
        r["old_step_s"] = r["sampler"]["old_s"] + v["old_s"] + update_at_step_table
        r["model_update_s_at_this_table"] = (model_rows[0]["update_s"]
                                             + per_item_update * (r["items"] - model_rows[0]["table_rows"]))
    first = rows_out[0]
    return {
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "cpu_threads": torch.get_num_threads()},
        "batch": BATCH, "embed_dim": trainer.model.cfg.embed_dim, "negatives": trainer.model.cfg.n_negatives,
        "steps": steps, "old_steps": old_steps, "step_table_rows": STEP_TABLE,
        "model_update": model_rows, "model_update_s_per_item": per_item_update,
        "old_validation_s_per_item": per_item_validation,
        "sizes": rows_out,
        "new_step_growth": max(r["new_step_s"] for r in rows_out) / first["new_step_s"],
        "old_step_growth": max(r["old_step_s"] for r in rows_out) / first["old_step_s"],
        "new_catalogue_parts_growth": (max(_catalogue_parts(r, "new_s") for r in rows_out)
                                       / _catalogue_parts(first, "new_s")),
        "old_catalogue_parts_growth": (max(_catalogue_parts(r, "old_s") for r in rows_out)
                                       / _catalogue_parts(first, "old_s")),
    }


def _catalogue_parts(row: dict, which: str) -> float:
    """Seconds of the parts this change is about: following the counts, negatives, validation."""
    return row["sampler"][which] + row["validation"][which]


def markdown(result: dict) -> str:
    lines = [
        "# Learner step time vs catalogue size (CPU, one thread)",
        "",
        f"Batch {result['batch']}, dim {result['embed_dim']}, {result['negatives']} negatives; medians of "
        f"{result['steps']} steps (new) and {result['old_steps']} (old) in one run. A step = follow the counts + "
        f"negatives + log Q (sampler), progressive validation, and the model update at a fixed "
        f"{result['step_table_rows']:,}-row item table (see the last table for its growth). Old: re-rank every "
        "item, every sample against every item. New: set_counts on the rows counted; validation exact up to "
        "100 k items, above it 16 samples of the batch against 400 k sampled items (learner/progressive.py).",
        "",
        "| items | sampler new | sampler old | validation new | validation old | step new | step old | old / new |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["sizes"]:
        s, v = r["sampler"], r["validation"]
        old_v = f"{v['old_s'] * 1e3:,.0f} ms" + (" (extrapolated)" if v["old_extrapolated"] else "")
        lines.append(f"| {r['items']:,} | {s['new_s'] * 1e3:.1f} ms | {s['old_s'] * 1e3:,.0f} ms | "
                     f"{v['new_s'] * 1e3:.0f} ms | {old_v} | {r['new_step_s'] * 1e3:,.0f} ms | "
                     f"{r['old_step_s'] * 1e3:,.0f} ms | {r['old_step_s'] / r['new_step_s']:.1f}x |")
    lines += [
        "",
        f"New step, largest / smallest catalogue: **{result['new_step_growth']:.2f}x**; old: "
        f"**{result['old_step_growth']:.0f}x**; sampler + validation alone: new "
        f"**{result['new_catalogue_parts_growth']:.2f}x**, old **{result['old_catalogue_parts_growth']:.0f}x**. "
        "The new sampler's one-off build (a full ranking, at start "
        "or from an old checkpoint): " + ", ".join(f"{r['items']:,}: {r['sampler']['new_build_s']:.2f} s"
                                                  for r in result["sizes"]) + ".",
        "",
        "Model update (forward, backward, clipping, AdaGrad) against the item-table size, same run:",
        "",
        "| item-table rows | update |",
        "|---:|---:|",
    ]
    lines += [f"| {m['table_rows']:,} | {m['update_s'] * 1e3:,.0f} ms |" for m in result["model_update"]]
    lines += [
        "",
        f"It grows by {result['model_update_s_per_item'] * 1e9:.0f} ns per item row (dense gradients of the two "
        "item tables and a dense AdaGrad update): extrapolated "
        + ", ".join(f"{r['items']:,}: {r['model_update_s_at_this_table']:.1f} s"
                    for r in result["sizes"]) + ". Not part of this change; it is the next O(N) term.",
    ]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    plt = pyplot()
    items = [r["items"] for r in result["sizes"]]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(items, [r["old_step_s"] for r in result["sizes"]], "o-", label="step, old (re-rank + full validation)")
    ax.plot(items, [r["new_step_s"] for r in result["sizes"]], "o-", label="step, new")
    ax.plot(items, [r["sampler"]["old_s"] for r in result["sizes"]], "s--", label="sampler, old")
    ax.plot(items, [r["sampler"]["new_s"] for r in result["sizes"]], "s--", label="sampler, new")
    ax.plot([m["table_rows"] for m in result["model_update"]], [m["update_s"] for m in result["model_update"]],
            "^:", label="model update vs its table rows")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("items in the catalogue")
    ax.set_ylabel("seconds per step (median)")
    ax.set_title(f"Learner step, batch {result['batch']}, dim {result['embed_dim']}, CPU")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,1000000,10000000,30000000")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--old-steps", type=int, default=2)
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    result = run([int(s) for s in args.sizes.split(",")], args.steps, args.old_steps)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "learner_scale.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    (out / "learner_scale.md").write_text(text)
    plot(result, out / "learner_scale.png")
    print(text)


if __name__ == "__main__":
    main()
