"""Where a lift comes from: B's lift over A within thirds of the test users, by how rare their labels are.

A question the 48,000-user check raised (README, Table 2 section): is what XDM adds over SDM worth more
where the model has seen little of the items to predict? Each test user gets the median number of times
their label items occur as training labels (`learner.data` split, read from the split cache or built from
the log); the users are cut into thirds by it, and within each third the lift of run B over run A is
computed from both runs' per-user metrics (their eval.json) with the paired bootstrap of
`learner.evaluation_stats`, as `xdm compare` does over all users. Only recorded files are read.

    .venv/bin/python bench/lift_by_label_rarity.py --data var/world12k10d \
        --runs var/ablation12k10d/sdm var/ablation12k10d/xdm [--out bench/results/lift_by_label_rarity.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from learner.data import OfflineData, build_offline_data  # noqa: E402
from learner.evaluation_stats import paired_lift  # noqa: E402
from learner.offline import load_evaluation, training_label_counts  # noqa: E402

KEYS = ("hr@50", "mrr@50", "recall@50")
THIRDS = ("rarest third", "middle third", "most frequent third")


def user_rarity(data: OfflineData, counts: dict[str, int]) -> np.ndarray:
    """Per test user (test-table order): the median training-label count of their label items."""
    return np.array([np.median([counts.get(item_id, 0) for item_id in data.test.label_items(u)])
                     for u in range(len(data.test))])


def lifts_by_third(run_a: dict, run_b: dict, rarity: np.ndarray) -> list[dict]:
    edges = np.quantile(rarity, [1 / 3, 2 / 3])
    groups = (rarity <= edges[0], (rarity > edges[0]) & (rarity <= edges[1]), rarity > edges[1])
    rows = []
    for name, mask in zip(THIRDS, groups):
        row = {"group": name, "users": int(mask.sum()), "max_median_label_count": float(rarity[mask].max())}
        for key in KEYS:
            lift = paired_lift(np.array(run_a["per_user"][key])[mask], np.array(run_b["per_user"][key])[mask])
            row[key] = {"a": lift.a, "b": lift.b, "lift": lift.lift, "low": lift.low, "high": lift.high}
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path, help="The log both runs were trained on.")
    parser.add_argument("--runs", nargs=2, required=True, type=Path, metavar=("RUN_A", "RUN_B"))
    parser.add_argument("--test-days", type=float, default=2.0)
    parser.add_argument("--cache", default="var/offline-cache", help="Split cache folder ('' = none).")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "lift_by_label_rarity.json")
    args = parser.parse_args()
    run_a, run_b = (load_evaluation(run) for run in args.runs)
    data = build_offline_data(args.data, test_days=args.test_days, cache_dir=args.cache or None)
    if list(data.test.user_ids) != run_a["users"] or run_a["users"] != run_b["users"]:
        sys.exit("the runs were not scored on this split's test users: check --data and --test-days")
    rows = lifts_by_third(run_a, run_b, user_rarity(data, training_label_counts(data)))
    for row in rows:
        cells = "  ".join(f"{key} {row[key]['a']:.2%} -> {row[key]['b']:.2%} {row[key]['lift']:+.1%} "
                          f"[{row[key]['low']:+.1%}, {row[key]['high']:+.1%}]" for key in KEYS)
        print(f"{row['group']:20s} {row['users']:6,d} users (median label count <= "
              f"{row['max_median_label_count']:,.0f})  {cells}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"data": str(args.data), "runs": [str(r) for r in args.runs], "rows": rows},
                                   indent=2))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
