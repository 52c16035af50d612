"""The learner's step time against the catalogue size: today's code (re-rank every item, validate on every
item) beside the new one (ranks kept incrementally, sampled validation), in one run, on CPU.

One step here is what Trainer.step costs apart from collating: follow the counts of the step's labels
(new: `LogUniformSampler.set_counts` on the rows counted; old: `rerank_every_item_baseline`, a copy of the
sampler's update_counts before #26 B2, fed a copy of the vocabulary's count list as the trainer did),
draw the negatives and look up log Q of the batch, progressive validation (new: the trainer's dispatch,
exact up to learner.validation_full_max_items, sampled above; old: `validate_every_item`, B x N scores),
and the model update, `Trainer.learn` itself (forward, backward, clipping, AdaGrad) with item tables of
N rows (new: learner.sparse_item_update=auto, the default: tables above 100 k rows get row-sparse
gradients and AdaGrad on the rows the batch touched, smaller ones stay dense; old: off, dense gradients
of both item tables and a dense AdaGrad pass).

Synthetic data: Zipf-like counts over N items (count ~ 10^6 / rank^0.8), batches of 256 samples with
the papers' Table-1 window lengths (13 short, 21 long, 71 unclicked behaviours, 5 labels) over a 5 k-item
pool, the default model (embed_dim 64, 1000 negatives), a random N x 64 output table for validation.
What could not run on this 24 GB machine, and what was done instead (the report says it again):
- the old validation scores B x N at once: 10 GB at 10 M items, 31 GB at 30 M, so it is measured at the
  sizes up to 1 M and extrapolated linearly (per item) to 10 M and 30 M, marked as such;
- the model update holds two N x 64 float32 item tables and their AdaGrad sums, 1 KB per item (10 M:
  10.2 GB, 30 M: 30.7 GB): it is measured where that fits in the memory available (with a margin), and at
  a size that does not fit the report gives the memory it would need and no time (the step there carries
  the update measured at the largest size, marked); the old dense update also holds dense gradients
  (1.5 KB per item) and takes seconds per step per million rows, so it is measured up to --dense-max items
  and extrapolated linearly beyond, marked.

    .venv/bin/python bench/learner_scale.py [--sizes 10000,1000000,10000000,30000000] [--steps 20] [--old-steps 2] \\
        [--dense-max 1000000]

Writes bench/results/learner_scale/learner_scale.json, .md and .png; prints the markdown.

`--update-dim D` measures only the new model update, at every size, with a model of embed_dim D: its tables
take D/64 of the memory (dim 16: 7.7 GB at 30 M items), so the update's growth from 10 k to 30 M items is
measured on this machine rather than carried from 10 M. The update's cost per step comes from the rows a
batch touches, not from N, at any width; the default-width run above gives its absolute time. Writes
learner_scale_update_dimD.json and .md beside the others.
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
def table_bytes_per_item(dim: int) -> int:
    """Two item tables (input, output) and their AdaGrad sums, float32 x dim."""
    return 2 * 2 * dim * 4


DENSE_GRAD_BYTES_PER_ITEM = 2 * 64 * 4  # the old update's dense gradients of both tables
MEMORY_MARGIN = 1.3  # growing a table copies it once; other processes share this machine
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


def available_bytes() -> int:
    """MemAvailable of /proc/meminfo (Linux), in bytes."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def model_parts(n: int, warm: Trainer, batch, steps: int, old_steps: int, dense_max: int) -> dict:
    """Seconds of Trainer.learn (forward, loss, backward, clipping, AdaGrad) with item tables of N rows:
    new (sparse_item_update=auto) where the tables fit in memory, old (off) up to dense_max items."""
    sparse_bytes = table_bytes_per_item(warm.model.cfg.embed_dim) * (n + 1)
    out = {"new_s": None, "old_s": None, "memory_gb": sparse_bytes / 1e9,
           "old_memory_gb": (sparse_bytes + DENSE_GRAD_BYTES_PER_ITEM * (n + 1)) / 1e9}
    if sparse_bytes * MEMORY_MARGIN > available_bytes():
        return out
    trainer = Trainer(warm.model.cfg, device="cpu", vocab=warm.vocab, sparse_item_update="auto")
    trainer.model.load_state_dict(warm.model.state_dict())
    trainer.model.grow_to({"item": n + 1})
    trainer.optimizer = trainer._adagrad(trainer.lr)  # AdaGrad's sums, one per row of the grown tables
    trainer.sampler = LogUniformSampler(zipf_counts(n, seed=n))
    trainer.learn(batch)  # AdaGrad's state is allocated on the first step
    out["new_s"] = timed(lambda: trainer.learn(batch), steps)
    if n <= dense_max:
        trainer.sparse_item_update = "off"
        trainer.learn(batch)
        out["old_s"] = timed(lambda: trainer.learn(batch), old_steps)
    del trainer
    gc.collect()
    return out


# ---- the run

def warm_trainer(dim: int = 64) -> tuple[Trainer, object]:
    """The default model (1000 negatives) at embed_dim `dim`, its vocabulary filled with the pool's items,
    and one collated batch."""
    torch.manual_seed(0)
    trainer = Trainer(config_for("xdm", embed_dim=dim), device="cpu")
    rng = random.Random(0)
    for serial in range(2):
        trainer.step(synthetic_batch(rng, serial))
    return trainer, collate(synthetic_batch(rng, 99), trainer.vocab, grow=False)


def run(sizes: list[int], steps: int, old_steps: int, dense_max: int) -> dict:
    trainer, batch = warm_trainer()

    rows_out = []
    for n in sizes:
        sampler = sampler_parts(n, steps, old_steps, trainer, batch)
        validation = validation_parts(n, steps, old_steps, trainer, batch)
        model = model_parts(n, trainer, batch, max(3, steps // 3), old_steps, dense_max)
        rows_out.append({"items": n, "sampler": sampler, "validation": validation, "model": model})
        old_validation = "-" if validation["old_s"] is None else f"{validation['old_s'] * 1e3:.1f} ms"
        update = ("-" if model["new_s"] is None else f"{model['new_s'] * 1e3:.0f} ms") + " old " + (
            "-" if model["old_s"] is None else f"{model['old_s'] * 1e3:.0f} ms")
        print(f"{n:,} items: sampler new {sampler['new_s'] * 1e3:.1f} ms old {sampler['old_s'] * 1e3:.1f} ms; "
              f"validation new {validation['new_s'] * 1e3:.1f} ms old {old_validation}; update new {update}",
              flush=True)

    per_item_validation = _extrapolate([r["validation"] for r in rows_out], [r["items"] for r in rows_out])
    per_item_update = _extrapolate([r["model"] for r in rows_out], [r["items"] for r in rows_out])
    measured_update = [r for r in rows_out if r["model"]["new_s"] is not None]
    for r in rows_out:
        m = r["model"]
        m["new_from_items"] = r["items"]
        if m["new_s"] is None:  # tables that do not fit: the update measured at the largest size that did
            m["new_from_items"] = measured_update[-1]["items"]
            m["new_s"] = measured_update[-1]["model"]["new_s"]
        r["new_step_s"] = r["sampler"]["new_s"] + r["validation"]["new_s"] + m["new_s"]
        r["old_step_s"] = r["sampler"]["old_s"] + r["validation"]["old_s"] + m["old_s"]
    first = rows_out[0]
    fully_measured = [r for r in rows_out if r["model"]["new_from_items"] == r["items"]]
    return {
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "cpu_threads": torch.get_num_threads()},
        "batch": BATCH, "embed_dim": trainer.model.cfg.embed_dim, "negatives": trainer.model.cfg.n_negatives,
        "steps": steps, "old_steps": old_steps, "dense_max": dense_max,
        "old_validation_s_per_item": per_item_validation, "old_update_s_per_item": per_item_update,
        "sizes": rows_out,
        "new_step_growth": max(r["new_step_s"] for r in fully_measured) / first["new_step_s"],
        "new_step_growth_to": fully_measured[-1]["items"],
        "new_update_growth": max(r["model"]["new_s"] for r in fully_measured) / first["model"]["new_s"],
        "old_step_growth": max(r["old_step_s"] for r in rows_out) / first["old_step_s"],
        "new_catalogue_parts_growth": (max(_catalogue_parts(r, "new_s") for r in rows_out)
                                       / _catalogue_parts(first, "new_s")),
        "old_catalogue_parts_growth": (max(_catalogue_parts(r, "old_s") for r in rows_out)
                                       / _catalogue_parts(first, "old_s")),
    }


def run_update_only(sizes: list[int], steps: int, dim: int) -> dict:
    """The new model update alone at each size, tables of width `dim` (see --update-dim)."""
    trainer, batch = warm_trainer(dim)
    rows_out = []
    for n in sizes:
        model = model_parts(n, trainer, batch, max(3, steps // 3), 0, dense_max=0)
        rows_out.append({"items": n, "update_s": model["new_s"], "memory_gb": model["memory_gb"]})
        shown = "does not fit" if model["new_s"] is None else f"{model['new_s'] * 1e3:.0f} ms"
        print(f"{n:,} items, dim {dim}: update {shown} ({model['memory_gb']:.1f} GB of tables)", flush=True)
    measured = [r for r in rows_out if r["update_s"] is not None]
    return {"machine": {"python": platform.python_version(), "torch": torch.__version__,
                        "cpu_threads": torch.get_num_threads()},
            "batch": BATCH, "embed_dim": dim, "negatives": trainer.model.cfg.n_negatives,
            "steps": max(3, steps // 3), "sizes": rows_out,
            "update_growth": max(r["update_s"] for r in measured) / measured[0]["update_s"],
            "update_growth_to": measured[-1]["items"]}


def markdown_update_only(result: dict) -> str:
    lines = [f"# Learner model update vs catalogue size at embed_dim {result['embed_dim']} (CPU)", "",
             f"Batch {result['batch']}, dim {result['embed_dim']}, {result['negatives']} negatives; median of "
             f"{result['steps']} steps of Trainer.learn (forward, backward, clipping, AdaGrad; "
             "learner.sparse_item_update=auto) with item tables of N rows, in one run. Narrow tables so that "
             "the largest catalogue fits in this machine's memory; the default-width figures are in "
             "learner_scale.md.", "", "| items | update | tables + AdaGrad sums |", "|---:|---:|---:|"]
    for r in result["sizes"]:
        shown = "does not fit" if r["update_s"] is None else _ms(r["update_s"])
        lines.append(f"| {r['items']:,} | {shown} | {r['memory_gb']:.1f} GB |")
    lines += ["", f"Largest measured ({result['update_growth_to']:,} items) / smallest: "
              f"**{result['update_growth']:.2f}x**."]
    return "\n".join(lines) + "\n"


def _extrapolate(parts: list[dict], items: list[int]) -> float:
    """Fill each part's missing "old_s" linearly in the items from its smallest and largest measured
    sizes (marking it "old_extrapolated"); returns the slope, seconds per item."""
    measured = [(n, p["old_s"]) for n, p in zip(items, parts) if p["old_s"] is not None]
    (small_n, small_s), (large_n, large_s) = measured[0], measured[-1]
    per_item = (large_s - small_s) / max(1, large_n - small_n)
    for n, p in zip(items, parts):
        p["old_extrapolated"] = p["old_s"] is None
        if p["old_s"] is None:
            p["old_s"] = large_s + per_item * (n - large_n)
    return per_item


def _catalogue_parts(row: dict, which: str) -> float:
    """Seconds of the parts this change is about: following the counts, negatives, validation."""
    return row["sampler"][which] + row["validation"][which]


def _ms(seconds: float, extrapolated: bool = False) -> str:
    return f"{seconds * 1e3:,.0f} ms" + (" (extrapolated)" if extrapolated else "")


def markdown(result: dict) -> str:
    lines = [
        "# Learner step time vs catalogue size (CPU, one thread)",
        "",
        f"Batch {result['batch']}, dim {result['embed_dim']}, {result['negatives']} negatives; medians of "
        f"{result['steps']} steps (new sampler and validation), {max(3, result['steps'] // 3)} (new update) and "
        f"{result['old_steps']} (old) in one run. A step = follow the counts + negatives + log Q (sampler), "
        "progressive validation, and the model update (Trainer.learn: forward, backward, clipping, AdaGrad) "
        "with item tables of N rows. Old: re-rank every item, every sample against every item, dense "
        "item-table gradients and AdaGrad. New: set_counts on the rows counted; validation exact up to 100 k "
        "items, above it 16 samples of the batch against 400 k sampled items (learner/progressive.py); "
        "row-sparse gradients and AdaGrad on the touched rows of the tables above 100 k rows "
        "(learner.sparse_item_update=auto; at 10 k items the new update is the dense one).",
        "",
        "| items | sampler new | sampler old | validation new | validation old | update new | update old "
        "| step new | step old | old / new |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["sizes"]:
        s, v, m = r["sampler"], r["validation"], r["model"]
        carried = m["new_from_items"] != r["items"]
        new_update = (f"not measured: tables need {m['memory_gb']:.1f} GB" if carried else _ms(m["new_s"]))
        new_step = _ms(r["new_step_s"]) + (f" (update at {m['new_from_items']:,})" if carried else "")
        lines.append(f"| {r['items']:,} | {s['new_s'] * 1e3:.1f} ms | {_ms(s['old_s'])} | {_ms(v['new_s'])} | "
                     f"{_ms(v['old_s'], v['old_extrapolated'])} | {new_update} | "
                     f"{_ms(m['old_s'], m['old_extrapolated'])} | {new_step} | {_ms(r['old_step_s'])} | "
                     f"{r['old_step_s'] / r['new_step_s']:.0f}x |")
    lines += [
        "",
        f"New step, largest fully measured catalogue ({result['new_step_growth_to']:,} items) / smallest: "
        f"**{result['new_step_growth']:.2f}x** (model update alone **{result['new_update_growth']:.2f}x**); "
        f"old: **{result['old_step_growth']:.0f}x**; sampler + validation alone: new "
        f"**{result['new_catalogue_parts_growth']:.2f}x**, old **{result['old_catalogue_parts_growth']:.0f}x**. "
        "The new sampler's one-off build (a full ranking, at start "
        "or from an old checkpoint): " + ", ".join(f"{r['items']:,}: {r['sampler']['new_build_s']:.2f} s"
                                                  for r in result["sizes"]) + ".",
        "",
        f"The old dense update grows by {result['old_update_s_per_item'] * 1e9:.0f} ns per item row "
        f"(measured up to {result['dense_max']:,} items, extrapolated beyond). Memory of the item tables and "
        "their AdaGrad sums (1 KB per item, the same in both paths; old adds 0.5 KB of dense gradients): "
        + ", ".join(f"{r['items']:,}: {r['model']['memory_gb']:.1f} GB" for r in result["sizes"]) + ".",
    ]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    plt = pyplot()
    rows = result["sizes"]
    items = [r["items"] for r in rows]
    measured = [r for r in rows if r["model"]["new_from_items"] == r["items"]]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(items, [r["old_step_s"] for r in rows], "o-", label="step, old (re-rank, full validation, dense update)")
    ax.plot([r["items"] for r in measured], [r["new_step_s"] for r in measured], "o-", label="step, new")
    ax.plot(items, [r["model"]["old_s"] for r in rows], "^:", label="model update, old (dense)")
    ax.plot([r["items"] for r in measured], [r["model"]["new_s"] for r in measured], "^:",
            label="model update, new (auto: sparse above 100 k rows)")
    ax.plot(items, [r["sampler"]["new_s"] for r in rows], "s--", label="sampler, new")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("items in the catalogue")
    ax.set_ylabel("seconds per step (median)")
    ax.set_title(f"Learner step, batch {result['batch']}, dim {result['embed_dim']}, CPU "
                 "(old beyond its measured sizes: extrapolated)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,1000000,10000000,30000000")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--old-steps", type=int, default=2)
    parser.add_argument("--dense-max", type=int, default=1_000_000, help="largest catalogue of the old dense update")
    parser.add_argument("--update-dim", type=int, default=0,
                        help="measure only the new model update, tables of this width (see the docstring)")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.update_dim:
        narrow = run_update_only(sizes, args.steps, args.update_dim)
        stem = out / f"learner_scale_update_dim{args.update_dim}"
        stem.with_suffix(".json").write_text(json.dumps(narrow, indent=2) + "\n")
        stem.with_suffix(".md").write_text(markdown_update_only(narrow))
        print(markdown_update_only(narrow))
        return
    result = run(sizes, args.steps, args.old_steps, args.dense_max)
    (out / "learner_scale.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    (out / "learner_scale.md").write_text(text)
    plot(result, out / "learner_scale.png")
    print(text)


if __name__ == "__main__":
    main()
