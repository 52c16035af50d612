"""How the online learner's single chronological pass treats SDM and XDM, with and without rehearsal.

The online learner takes each sample once, in event-time order, in batches of 256; offline training
shuffles and makes several passes. This bench trains each (variant, rehearsal steps) pair the online
way on a log's validation split (the last test_days before the test period held out, as `xdm tune`
does): training samples sorted by time, one pass of `Trainer.step` per batch of new samples, each
followed by R rehearsal steps drawn by learner.rehearsal.Rehearsal from the last WINDOW samples (the
learner's own code). Then it evaluates on the validation users and compares XDM with SDM at the same R
(paired bootstrap over users, learner.offline.compare).

    .venv/bin/python bench/online_rehearsal.py [--data var/world14d] [--rehearsal 0,2] [--window 20000]
        [--workers 2] [--out bench/results/online_rehearsal]

The README's figures come from the 14-day world the A/B runs use (`xdm simulate --users 6000 --days 14
--out var/world14d`), the default --data.

Writes report.json (every figure), report.md (the table) and report.png (HR@50 / MRR@50 per arm and R).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = ("sdm", "xdm")
BATCH = 256


def one_pass(data_dir: str, cache: str, variant: str, rehearsal_steps: int, window: int, seed: int) -> dict:
    from learner.batch import Vocabulary
    from learner.data import build_offline_data
    from learner.model import config_for
    from learner.offline import evaluation_result, score_test_users
    from learner.rehearsal import Rehearsal
    from learner.split import Split
    from learner.trainer import Trainer
    from xdm.config import LearnerConfig

    lc = LearnerConfig()
    # scored at the cut, as the committed report was; its figures are read against the replay's, not Table 2's
    data = build_offline_data(Split(data_dir, test_anchor="cut", cache_dir=cache).validation(), progress=False)
    cfg = config_for(variant)
    trainer = Trainer(cfg, lr=lc.lr, clip_norm=lc.clip_norm, seed=seed, vocab=Vocabulary(cfg.profile_field_names),
                      threads=1, adagrad_init=lc.adagrad_init, lr_warmup_steps=lc.lr_warmup_steps)
    rehearsal = Rehearsal(rehearsal_steps, window, seed)
    order = sorted(range(len(data.train)), key=lambda i: data.train[i].ts_ms)
    started = time.monotonic()
    progressive: list[float] = []
    for start in range(0, len(order), BATCH):
        new = [(0, i) for i in order[start:start + BATCH]]
        stats = trainer.step([data.train[i] for _, i in new])
        progressive.append(stats.hr50)
        rehearsal.remember((ref, data.train[ref[1]]) for ref in new)
        for batch in rehearsal.batches(BATCH):
            trainer.step(batch, rehearsal=True)
    train_s = time.monotonic() - started
    result = evaluation_result(None, variant, data, score_test_users(trainer, data.test), 1000, 0)
    tail = progressive[-50:]
    result["online"] = {"variant": variant, "rehearsal_steps": rehearsal_steps, "window": window,
                        "steps": trainer.steps, "samples": trainer.samples_seen, "train_s": round(train_s, 1),
                        "progressive_hr50_last50_steps": sum(tail) / len(tail)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="var/world14d")
    parser.add_argument("--cache", default="var/offline-cache")
    parser.add_argument("--rehearsal", default="0,2", help="comma-separated rehearsal steps per new batch")
    parser.add_argument("--window", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "online_rehearsal"))
    args = parser.parse_args()
    from learner.offline import compare

    grid = [(v, int(r)) for r in args.rehearsal.split(",") for v in VARIANTS]
    with ProcessPoolExecutor(args.workers) as pool:
        futures = {(v, r): pool.submit(one_pass, args.data, args.cache, v, r, args.window, args.seed) for v, r in grid}
        results = {key: f.result() for key, f in futures.items()}
    rows = []
    for r in sorted({r for _, r in grid}):
        sdm, xdm = results[("sdm", r)], results[("xdm", r)]
        lift = compare(sdm, xdm, 1000, 0)["lift"]
        rows.append({"rehearsal_steps": r, "window": args.window,
                     "sdm": {**sdm["online"], **{k: sdm["summary"][k]["mean"] for k in ("hr@50", "mrr@50")}},
                     "xdm": {**xdm["online"], **{k: xdm["summary"][k]["mean"] for k in ("hr@50", "mrr@50")}},
                     "lift": {k: lift[k] for k in ("hr@50", "mrr@50")}})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"data": args.data, "split": "validation (holdout_days = test_days)", "batch": BATCH, "rows": rows}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(markdown(report))
    plot(report, out / "report.png")
    print(markdown(report))


def markdown(report: dict) -> str:
    lines = [f"One chronological pass over {report['data']} ({report['split']}), batch {report['batch']}",
             "", "| rehearsal steps | SDM HR@50 | XDM HR@50 | lift HR@50 [95 %] | SDM MRR@50 | XDM MRR@50 "
             "| lift MRR@50 [95 %] | progressive HR@50 SDM / XDM | train s SDM / XDM |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        s, x, lift = row["sdm"], row["xdm"], row["lift"]
        lines.append(
            f"| {row['rehearsal_steps']} | {s['hr@50']:.2%} | {x['hr@50']:.2%} | {_lift(lift['hr@50'])} "
            f"| {s['mrr@50']:.4f} | {x['mrr@50']:.4f} | {_lift(lift['mrr@50'])} "
            f"| {s['progressive_hr50_last50_steps']:.3f} / {x['progressive_hr50_last50_steps']:.3f} "
            f"| {s['train_s']:.0f} / {x['train_s']:.0f} |")
    return "\n".join(lines) + "\n"


def _lift(lift: dict) -> str:
    return f"{lift['lift']:+.1%} [{lift['low']:+.1%}, {lift['high']:+.1%}]"


def plot(report: dict, path: Path) -> None:
    from xdm.plotting import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    labels = [str(row["rehearsal_steps"]) for row in report["rows"]]
    for ax, metric in zip(axes, ("hr@50", "mrr@50")):
        width = 0.38
        for shift, variant in ((-width / 2, "sdm"), (width / 2, "xdm")):
            ax.bar([i + shift for i in range(len(labels))], [row[variant][metric] for row in report["rows"]],
                   width, label=variant.upper())
        ax.set_xticks(range(len(labels)), labels)
        ax.set_xlabel("rehearsal steps per new batch")
        ax.set_title(f"{metric.upper()} after one chronological pass")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
