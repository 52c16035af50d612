"""Responsiveness, offline, per row: after the user's top-1 is shown and skipped k times, how far do it and its
leaf fall in the next top-50? (#28, docs/experiments/plugin-protocol.md; the measure: learner/responsiveness.py)

Each run folder (from `xdm train`) is loaded as `xdm evaluate` loads it; its users are the validation users
of the run's own split (`Split.of_run(...).validation()`: the test period held out unread, the days before
it scored, each user's windows at their validation anchor; labels are never read). Writes
OUT/responsiveness.json, .md and .png and prints the table.

    .venv/bin/python bench/responsiveness.py --data D --runs var/plugin28/D/* --k 1,2,3,5
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from learner.data import OfflineData, build_offline_data  # noqa: E402
from learner.evaluation_stats import DEFAULT_BOOT  # noqa: E402
from learner.offline import load_run  # noqa: E402
from learner.responsiveness import DEFAULT_KS, TOP_N, responsiveness  # noqa: E402
from learner.split import Split  # noqa: E402
from xdm.plotting import pyplot  # noqa: E402
from xdm.progress import progress_bar  # noqa: E402


def measure_run(run_dir: Path, args: argparse.Namespace, splits: dict[Split, OfflineData]) -> dict[str, Any]:
    run, trainer = load_run(run_dir)
    split = Split.of_run(run, args.data, args.cache or None).validation()
    if split not in splits:  # rows trained on the same log share one built split
        splits[split] = build_offline_data(split, progress=False)
    data = splits[split]
    chosen = _chosen_users(len(data.test), args.users, args.seed)
    samples = [data.test[u] for u in chosen]
    items = {item.item_id: item for item in data.items}
    report = responsiveness(trainer, samples, items, args.k, split.windows, split.samples, args.boot, args.seed,
                            progress=lambda ks: progress_bar(ks, desc=run["variant"], unit="k"))
    return {"run": str(run_dir), "variant": run["variant"], "data": data.summary(), "validation_users": len(data.test),
            **report}


def _chosen_users(n: int, wanted: int, seed: int) -> list[int]:
    """All users, or a seeded sample of `wanted` of them in table order."""
    if wanted <= 0 or wanted >= n:
        return list(range(n))
    return sorted(np.random.default_rng(seed).choice(n, size=wanted, replace=False).tolist())


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| Row | k | users | left the top-50 | rank after (median) | leaf items in top-50 | skip in window |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        for k in r["ks"]:
            s, median = r["per_k"][k]["summary"], r["per_k"][k]["rank_median"]
            lines.append(f"| {r['variant']} | {k} | {r['users']:,} | {_ci(s['left_top'], '.1%')} | "
                         f"{_ci(s['rank_after'], '.1f')} ({median:g}) | {_ci(s['leaf_change'], '+.1%')} | "
                         f"{s['in_window']['mean']:.1%} |")
    lines += ["", f"Target: each validation user's top-1; k impressions of it without a click, one a minute after "
              f"the anchor, through the stream's window rules (learner/responsiveness.py). Rank after: {TOP_N + 1} "
              f"when it left the top-{TOP_N} (1 before). Leaf items: relative change in the number of top-{TOP_N} "
              "items from its leaf. Skip in window: share of users whose unclicked window holds it after the "
              "skips. Means with 95 % bootstrap intervals over users."]
    return "\n".join(lines) + "\n"


def _ci(interval: dict[str, float], fmt: str) -> str:
    return f"{interval['mean']:{fmt}} [{interval['low']:{fmt}}, {interval['high']:{fmt}}]"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    panels = (("left_top", f"share whose top-1 left the top-{TOP_N}"), ("rank_after", "its mean rank after"),
              ("leaf_change", f"change of its leaf's items in the top-{TOP_N}"))
    for ax, (measure, title) in zip(axes, panels):
        for r in rows:
            s = [r["per_k"][k]["summary"][measure] for k in r["ks"]]
            mean = np.array([x["mean"] for x in s])
            err = np.array([[x["mean"] - x["low"] for x in s], [x["high"] - x["mean"] for x in s]])
            ax.errorbar(r["ks"], mean, yerr=err, marker="o", capsize=3, label=r["variant"])
        ax.set_title(title)
        ax.set_xlabel("k (impressions without a click)")
    axes[0].legend()
    fig.suptitle("Responsiveness on validation users (95 % bootstrap intervals)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, nargs="+", required=True, help="Run folders from `xdm train`.")
    parser.add_argument("--data", type=Path, default=None, help="The log (default: each run's recorded one).")
    parser.add_argument("--k", type=lambda s: [int(x) for x in s.split(",") if x.strip()], default=list(DEFAULT_KS),
                        help="Comma-separated skip counts (default: 1,2,3,5).")
    parser.add_argument("--users", type=int, default=0, help="Validation users to score (0 = all), seeded.")
    parser.add_argument("--seed", type=int, default=0, help="Seeds the user sample and the bootstrap.")
    parser.add_argument("--boot", type=int, default=DEFAULT_BOOT)
    parser.add_argument("--cache", default=str(ROOT / "var" / "offline-cache"), help="Built splits ('' = none).")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "responsiveness")
    args = parser.parse_args(argv)
    if any(k < 0 for k in args.k):
        parser.error(f"--k counts impressions and must not be negative, got {args.k}")
    args.out.mkdir(parents=True, exist_ok=True)
    splits: dict[Split, OfflineData] = {}
    rows = [measure_run(run_dir, args, splits) for run_dir in args.runs]
    for r in rows:  # the per-user values stay in memory: the JSON keeps the summaries
        for entry in r["per_k"].values():
            entry.pop("per_user")
    report = {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}
    (args.out / "responsiveness.json").write_text(json.dumps(report, indent=2))
    (args.out / "responsiveness.md").write_text(format_table(rows))
    plot(rows, args.out / "responsiveness.png")
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
