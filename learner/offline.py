"""Offline training and evaluation on a time split of a log (learner/data.py), and Table 2's ablation.

- `train_offline`: epochs of `Trainer.step` (AdaGrad lr 0.1, clip 5, §4.3) over the training samples in
  similar-length batches (`length_buckets`). Writes a run directory:
      RUN/offline/checkpoint.pt   {"trainer": Trainer.state_dict(), "variant", "model_config"}: the file
                                  `xdm learn --warm-start RUN` loads (learner.checkpoint, arm "offline")
      RUN/run.json                config, variant, data path, split, timings, loss curve
- `evaluate`: full sort of every item the model knows (its vocabulary) for each test user, metrics at 50
  and 80 (learner/metrics.py), bootstrap 95% intervals over test users; per-user values kept for
  `compare`. Labels the model never saw count as misses.
- `compare`: paired bootstrap of B's relative lift over A on their common test users; a side may be the
  per-user mean of several runs (`average_evaluations`: other training seeds on the same split).
- The ablation (Table 2 rows, one table, chart and JSON) is in learner/ablation.py.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from learner.batch import Vocabulary, collate, length_buckets
from learner.checkpoint import load_checkpoint, save_checkpoint
from learner.data import OfflineData, SampleTable, build_offline_data
from learner.evaluation_stats import DEFAULT_BOOT, bootstrap_ci, paired_lift, random_hit_rate
from learner.metrics import metrics_at
from learner.model import config_for
from learner.split import Split
from learner.trainer import Trainer
from xdm.config import LearnerConfig
from xdm.errors import XdmError
from xdm.model_config import ModelConfig
from xdm.progress import progress_bar

log = logging.getLogger(__name__)

ARM = "offline"  # checkpoint sub-folder of a run; `xdm learn --warm-start RUN` reads it
CUTOFFS = (50, 80)  # Top-N of the papers' Table 2
METRICS = ("hr", "mrr", "recall", "f1")
METRIC_LABELS = {"hr": "HR", "mrr": "MRR", "recall": "R", "f1": "F1"}
EVAL_BATCH = 512
CURVE_POINTS = 200  # most points of the per-step loss curve kept in run.json


class RunError(XdmError):
    """A run directory or evaluation file is missing or not what it should be."""


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 3  # passes over the training samples
    batch_size: int = 256  # samples per step (papers §4.3)
    seed: int = 7
    lr: float = 0.1  # AdaGrad (papers §4.3)
    adagrad_init: float = 0.0  # AdaGrad's initial accumulator (learner/trainer.py: why torch's 0, not TF's 0.1)
    lr_warmup_steps: int = 100  # learning rate ramps in linearly over this many steps (learner/trainer.py: why)
    clip_norm: float = 5.0  # gradient clipping (papers §4.3)
    dense_optimizer: str = "auto"  # of the layers besides the tables (learner/trainer.py: auto = the base's paper's)
    adam_lr: float = 1e-3
    device: str = "auto"
    threads: int = 1  # torch CPU threads (Trainer's default: 1 beats 2 on a shared 2-core machine)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be at least 1")


def train_settings(lc: LearnerConfig, epochs: int | None = None, batch_size: int | None = None,
                   default_epochs: int = 3) -> TrainSettings:
    """The offline training settings the learner section of the config gives (what every command trains with)."""
    return TrainSettings(epochs=epochs or default_epochs, batch_size=batch_size or lc.batch_size, seed=lc.seed,
                         lr=lc.lr, adagrad_init=lc.adagrad_init, lr_warmup_steps=lc.lr_warmup_steps,
                         clip_norm=lc.clip_norm, dense_optimizer=lc.dense_optimizer, adam_lr=lc.adam_lr,
                         device=lc.device, threads=lc.torch_threads)


def metric_key(metric: str, n: int) -> str:
    return f"{metric}@{n}"


def metric_keys() -> list[str]:
    return [metric_key(m, n) for n in CUTOFFS for m in METRICS]


# ------------------------------------------------------------------------------------------------ train


def train_offline(
    split: Split | OfflineData,
    variant: str,
    out_dir: str | Path,
    settings: TrainSettings | None = None,
    model_overrides: dict[str, Any] | None = None,
    progress: bool = True,
) -> Path:
    """Train `variant` on the split's training samples; returns the run directory `out_dir`.

    `split` is built here, or already built (an ablation trains every row on one built split)."""
    settings = settings or TrainSettings()
    model_cfg = config_for(variant, **(model_overrides or {}))
    started = time.monotonic()
    data = split if isinstance(split, OfflineData) else build_offline_data(split, progress)
    data_s = time.monotonic() - started
    trainer = Trainer(model_cfg, lr=settings.lr, clip_norm=settings.clip_norm, seed=settings.seed,
                      device=settings.device, vocab=Vocabulary(model_cfg.profile_field_names),
                      threads=settings.threads, adagrad_init=settings.adagrad_init,
                      lr_warmup_steps=settings.lr_warmup_steps, dense_optimizer=settings.dense_optimizer,
                      adam_lr=settings.adam_lr)
    rng = random.Random(settings.seed)
    lengths = data.train.lengths_view()
    epochs: list[dict[str, float]] = []
    steps: list[dict[str, float]] = []
    train_started = time.monotonic()
    for epoch in range(1, settings.epochs + 1):
        totals = np.zeros(4)
        counted = 0
        batches = list(length_buckets(lengths, settings.batch_size, rng))
        bar = progress_bar(batches, desc=f"{variant} epoch {epoch}/{settings.epochs}", unit="batch",
                           show=progress, mininterval=2.0)
        for indices in bar:
            stats = trainer.step([data.train[i] for i in indices])
            if stats.skipped:
                continue
            row = (stats.loss, stats.ce, stats.triplet, stats.hr50)
            totals += row
            counted += 1
            steps.append({"step": trainer.steps, "epoch": epoch, "loss": stats.loss, "ce": stats.ce,
                          "triplet": stats.triplet, "hr50": stats.hr50})
            bar.set_postfix(loss=f"{stats.loss:.3f}", hr50=f"{stats.hr50:.3f}", refresh=False)
        mean = totals / max(counted, 1)
        epochs.append({"epoch": epoch, "loss": mean[0], "ce": mean[1], "triplet": mean[2],
                       "progressive_hr50": mean[3], "steps": counted})
        log.info("epoch done", extra={"variant": variant, **{k: round(v, 4) for k, v in epochs[-1].items()}})
    train_s = time.monotonic() - train_started
    out = Path(out_dir)
    save_checkpoint(str(out), ARM, {"trainer": trainer.state_dict(), "variant": variant,
                                    "model_config": asdict(model_cfg)})
    run = {
        "variant": variant,
        "model_config": asdict(model_cfg),
        "train_settings": asdict(settings),
        "device": str(trainer.device),
        "dense_optimizer": trainer.dense_optimizer_kind,
        "data": data.summary(),
        "window_rules": asdict(data.split.windows),
        "sample_rules": asdict(data.split.samples),
        "timings": {"data_s": round(data_s, 2), "train_s": round(train_s, 2),
                    "samples_per_s": round(trainer.samples_seen / train_s, 1) if train_s else None},
        "samples_seen": trainer.samples_seen,
        "steps": trainer.steps,
        "skipped_steps": trainer.skipped_steps,
        "loss_curve": {"epochs": epochs, "steps": steps[:: max(1, len(steps) // CURVE_POINTS)]},
    }
    (out / "run.json").write_text(json.dumps(run, indent=2))
    return out


def load_run(run_dir: str | Path) -> tuple[dict[str, Any], Trainer]:
    """run.json and a Trainer restored from the run's checkpoint (on CPU unless `device` says otherwise)."""
    run_path = Path(run_dir) / "run.json"
    if not run_path.is_file():
        raise RunError(f"{run_dir} is not an offline run (no run.json); train one with `xdm train`")
    run = json.loads(run_path.read_text())
    state = load_checkpoint(str(run_dir), ARM)
    if state is None:
        raise RunError(f"{run_dir} has run.json but no {ARM}/checkpoint.pt; train it again")
    trainer = Trainer(ModelConfig(**run["model_config"]), seed=run["train_settings"]["seed"], device="cpu")
    trainer.load_state_dict(state["trainer"])
    return run, trainer


# --------------------------------------------------------------------------------------------- evaluate


def evaluate(
    run_dir: str | Path,
    data_dir: str | Path | None = None,
    data: OfflineData | None = None,
    n_boot: int = DEFAULT_BOOT,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Per-user metrics of the run on the test users of `data_dir` (or `data`), with bootstrap intervals.

    The split is rebuilt with the run's own window rules, sample rules, test_days, holdout_days and test
    anchor (a run recorded without one was scored at the cut).
    """
    run, trainer = load_run(run_dir)
    if data is None:
        data = build_offline_data(Split.of_run(run, data_dir, cache_dir), progress)
    per_user = score_test_users(trainer, data.test)
    n_items = trainer.vocab.size("item") - 1
    known = [sum(trainer.vocab.lookup("item", i) > 0 for i in set(data.test.label_items(u)))
             for u in range(len(data.test))]
    result = evaluation_result(run_dir, run["variant"], data, per_user, n_boot, seed)
    result["n_items_ranked"] = n_items
    result["labels_unknown_to_model"] = 1 - sum(known) / sum(len(set(data.test.label_items(u)))
                                                            for u in range(len(data.test)))
    result["random_recall"] = {metric_key("hr", n): float(np.mean([random_hit_rate(n_items, k, n) for k in known]))
                               for n in CUTOFFS}
    return result


@torch.no_grad()
def score_test_users(trainer: Trainer, test: SampleTable) -> dict[str, list[float]]:
    """{metric@N: per-user values, in test-table order} from a full sort over the model's items."""
    model, vocab = trainer.model, trainer.vocab
    model.eval()
    top_n = max(CUTOFFS)
    out: dict[str, list[float]] = {key: [] for key in metric_keys()}
    for start in range(0, len(test), EVAL_BATCH):
        samples = test[start:start + EVAL_BATCH]
        batch = collate(samples, vocab, grow=False).to(trainer.device)
        scores = model.full_sort_predict(batch)
        k = min(top_n, scores.shape[1] - 1)
        top = torch.topk(scores, k, dim=1).indices.cpu().tolist()
        for rows, sample in zip(top, samples):
            record_metrics(out, [vocab.key("item", r) for r in rows], [b.item.item_id for b in sample.labels])
    return out


def record_metrics(per_user: dict[str, list[float]], ranked: list[str], labels: list[str]) -> None:
    """Append one test user's metrics at every cutoff to the per-user lists keyed by `metric_keys()`."""
    for n in CUTOFFS:
        m = metrics_at(ranked, labels, n)
        for metric in METRICS:
            per_user[metric_key(metric, n)].append(getattr(m, metric))


def evaluation_result(run_dir: str | Path | None, name: str, data: OfflineData,
                      per_user: dict[str, list[float]], n_boot: int, seed: int) -> dict[str, Any]:
    """The evaluation record `compare` reads: per-user values in test-table order and their intervals."""
    summary = {key: bootstrap_ci(values, n_boot, seed=seed).as_dict() for key, values in per_user.items()}
    return {"run": str(run_dir) if run_dir else None, "variant": name, "data": data.summary(),
            "users": list(data.test.user_ids), "per_user": per_user, "summary": summary,
            "bootstrap": {"n_boot": n_boot, "seed": seed, "alpha": 0.05}}


def training_label_counts(data: OfflineData) -> dict[str, int]:
    """How often each item occurs as a training label (the popularity floor ranks by it)."""
    counts: dict[str, int] = {}
    for i in range(len(data.train)):
        for item_id in data.train.label_items(i):
            counts[item_id] = counts.get(item_id, 0) + 1
    return counts


def popularity_baseline(data: OfflineData, n_boot: int = DEFAULT_BOOT, seed: int = 0) -> dict[str, Any]:
    """The same evaluation for "recommend the most clicked training labels to everyone" (a floor)."""
    counts = training_label_counts(data)
    ranked = sorted(counts, key=lambda item_id: (-counts[item_id], item_id))[: max(CUTOFFS)]
    per_user: dict[str, list[float]] = {key: [] for key in metric_keys()}
    for u in range(len(data.test)):
        record_metrics(per_user, ranked, data.test.label_items(u))
    return evaluation_result(None, "pop", data, per_user, n_boot, seed)


# ---------------------------------------------------------------------------------------------- compare


def load_evaluation(source: str | Path) -> dict[str, Any]:
    """An evaluation JSON written by `evaluate` (a file, or a run directory holding eval.json)."""
    path = Path(source)
    if path.is_dir():
        path = path / "eval.json"
    if not path.is_file():
        raise RunError(f"no evaluation at {path}; run `xdm evaluate RUN --data DIR --json {path}` first")
    result = json.loads(path.read_text())
    if "per_user" not in result or "users" not in result:
        raise RunError(f"{path} is not an evaluation written by `xdm evaluate` (no per-user values)")
    return result


SPLIT_KEYS = ("data_dir", "cut_ms", "end_ms", "test_days", "holdout_days")


def average_evaluations(evals: list[dict[str, Any]]) -> dict[str, Any]:
    """One evaluation from several runs of one variant on one split (other training seeds, say): each
    test user's value is the mean over the runs, so one run's training noise averages out before users
    are resampled. Users scored by every run are kept."""
    if not evals:
        raise ValueError("average_evaluations needs at least one evaluation")
    if len(evals) == 1:
        return evals[0]
    variants = sorted({e["variant"] for e in evals})
    if len(variants) > 1:
        raise RunError(f"runs averaged into one side must be one variant; got {', '.join(variants)}")
    splits = {tuple(e["data"].get(k) for k in SPLIT_KEYS) for e in evals}
    if len(splits) > 1:
        raise RunError("runs averaged into one side must be evaluated on the same log and split "
                       f"({', '.join(SPLIT_KEYS)} differ)")
    indexes = [{u: i for i, u in enumerate(e["users"])} for e in evals]
    users = sorted(set.intersection(*(set(index) for index in indexes)))
    keys = [k for k in evals[0]["per_user"] if all(k in e["per_user"] for e in evals)]
    per_user = {k: np.mean([[e["per_user"][k][index[u]] for u in users] for e, index in zip(evals, indexes)],
                           axis=0).tolist() for k in keys}
    return {"variant": variants[0], "users": users, "per_user": per_user, "data": evals[0]["data"],
            "runs": [e.get("run") for e in evals]}


def compare(eval_a: dict[str, Any], eval_b: dict[str, Any], n_boot: int = DEFAULT_BOOT,
            seed: int = 0) -> dict[str, Any]:
    """B's relative lift over A per metric, paired bootstrap over the test users both were scored on.
    Either side may be an `average_evaluations` of several runs."""
    index_a = {u: i for i, u in enumerate(eval_a["users"])}
    index_b = {u: i for i, u in enumerate(eval_b["users"])}
    common = sorted(index_a.keys() & index_b.keys())
    if not common:
        raise RunError("the two evaluations share no test user; evaluate both on the same log and split")
    lifts = {}
    for key in eval_a["per_user"]:
        if key not in eval_b["per_user"]:
            continue
        a = [eval_a["per_user"][key][index_a[u]] for u in common]
        b = [eval_b["per_user"][key][index_b[u]] for u in common]
        lifts[key] = paired_lift(a, b, n_boot, seed=seed).as_dict()
    return {"a": eval_a["variant"], "b": eval_b["variant"], "users": len(common), "lift": lifts,
            "runs": {"a": len(eval_a.get("runs", [None])), "b": len(eval_b.get("runs", [None]))}}


def format_lift(lift: dict[str, float] | None) -> str:
    """'+8.3% [+0.5%, +17.4%]': a lift and its 95% interval, as the tables print it."""
    if lift is None:
        return "–"
    return f"{lift['lift']:+.1%} [{lift['low']:+.1%}, {lift['high']:+.1%}]"


def format_comparison(result: dict[str, Any]) -> str:
    """Plain-text table of `compare`'s result."""
    runs = result.get("runs", {"a": 1, "b": 1})
    averaged = (f"; per-user means of {runs['a']} run(s) of {result['a']} and {runs['b']} of {result['b']}"
                if max(runs.values()) > 1 else "")
    lines = [f"{result['b']} vs {result['a']} on {result['users']:,} common test users (paired bootstrap, 95%"
             f"{averaged})",
             f"{'metric':<10}{result['a']:>12}{result['b']:>12}{'lift':>10}  interval"]
    for key, lift in result["lift"].items():
        mark = "*" if lift["low"] > 0 or lift["high"] < 0 else " "
        lines.append(f"{_label(key):<10}{lift['a']:>12.4f}{lift['b']:>12.4f}{lift['lift']:>+10.2%}{mark} "
                     f"[{lift['low']:+.2%}, {lift['high']:+.2%}]")
    lines.append("* the interval excludes 0")
    return "\n".join(lines)


def _label(key: str) -> str:
    metric, _, n = key.partition("@")
    return f"{METRIC_LABELS.get(metric, metric)}@{n}"
