"""Where a lift comes from: B's lift over A within thirds of the test users, cut by one per-user measure.

Questions the 48,000-user check raised (README, Table 2 section): is what XDM adds over SDM worth more
where the model has seen little? Each test user gets one number, `--by`:

- `label-rarity`: the median number of times their label items occur as training labels;
- `user-samples`: how many training samples the user has (how often the model saw this user);
- `unclicked`: the length of the user's unclicked window at the cut (what XDM has to subtract).

The users are cut into thirds by it (ties stay together, so thirds can differ in size), and within
each third the lift of run B over run A is computed from both runs' per-user metrics (their eval.json)
with the paired bootstrap of `learner.evaluation_stats`, as `xdm compare` does over all users. Only
recorded files are read: the split (`learner.data`, from the split cache or built from the log) and the
two runs.

    .venv/bin/python bench/lift_by_thirds.py --data var/world12k10d --by label-rarity \
        --runs var/ablation12k10d/sdm var/ablation12k10d/xdm [--out bench/results/lift_by_thirds/lift_by_thirds.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from learner.data import OfflineData, build_offline_data  # noqa: E402
from learner.evaluation_stats import paired_lift  # noqa: E402
from learner.offline import load_evaluation, training_label_counts  # noqa: E402
from learner.split import DEFAULT_TEST_ANCHOR, TEST_ANCHORS, Split  # noqa: E402

KEYS = ("hr@50", "mrr@50", "recall@50")
THIRDS = ("lowest third", "middle third", "highest third")


def label_rarity(data: OfflineData) -> np.ndarray:
    """Per test user (test-table order): the median training-label count of their label items."""
    counts = training_label_counts(data)
    return np.array([np.median([counts.get(item_id, 0) for item_id in data.test.label_items(u)])
                     for u in range(len(data.test))])


def user_samples(data: OfflineData) -> np.ndarray:
    """Per test user: their training samples (0 for a user first seen in the test period's windows)."""
    counts = Counter(data.train.user_ids)
    return np.array([counts.get(user_id, 0) for user_id in data.test.user_ids], dtype=float)


def unclicked_length(data: OfflineData) -> np.ndarray:
    """Per test user: items in their unclicked window at the cut."""
    return np.array([data.test.length("unclicked", u) for u in range(len(data.test))], dtype=float)


MEASURES: dict[str, Callable[[OfflineData], np.ndarray]] = {
    "label-rarity": label_rarity, "user-samples": user_samples, "unclicked": unclicked_length}


def lifts_by_third(run_a: dict, run_b: dict, measure: np.ndarray) -> list[dict]:
    edges = np.quantile(measure, [1 / 3, 2 / 3])
    groups = (measure <= edges[0], (measure > edges[0]) & (measure <= edges[1]), measure > edges[1])
    rows = []
    for name, mask in zip(THIRDS, groups):
        if not mask.any():  # heavy ties can leave a third empty
            continue
        row = {"group": name, "users": int(mask.sum()), "min": float(measure[mask].min()),
               "max": float(measure[mask].max())}
        for key in KEYS:
            row[key] = paired_lift(np.array(run_a["per_user"][key])[mask],
                                   np.array(run_b["per_user"][key])[mask]).as_dict()
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path, help="The log both runs were trained on.")
    parser.add_argument("--runs", nargs=2, required=True, type=Path, metavar=("RUN_A", "RUN_B"))
    parser.add_argument("--by", choices=sorted(MEASURES), default="label-rarity", help="The per-user measure.")
    parser.add_argument("--test-days", type=float, default=2.0)
    parser.add_argument("--holdout-days", type=float, default=0.0,
                        help="Last days held out unread (runs scored on xdm tune's validation split: --test-days).")
    parser.add_argument("--test-anchor", choices=TEST_ANCHORS, default=DEFAULT_TEST_ANCHOR,
                        help="Where the runs' test windows were taken (learner/data.py).")
    parser.add_argument("--cache", default="var/offline-cache", help="Split cache folder ('' = none).")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "lift_by_thirds" / "lift_by_thirds.json")
    args = parser.parse_args()
    run_a, run_b = (load_evaluation(run) for run in args.runs)
    data = build_offline_data(Split(args.data, test_days=args.test_days, holdout_days=args.holdout_days,
                                    test_anchor=args.test_anchor, cache_dir=args.cache or None))
    if list(data.test.user_ids) != run_a["users"] or run_a["users"] != run_b["users"]:
        sys.exit("the runs were not scored on this split's test users: "
                 "check --data, --test-days, --holdout-days and --test-anchor")
    rows = lifts_by_third(run_a, run_b, MEASURES[args.by](data))
    for row in rows:
        cells = "  ".join(f"{key} {row[key]['a']:.2%} -> {row[key]['b']:.2%} {row[key]['lift']:+.1%} "
                          f"[{row[key]['low']:+.1%}, {row[key]['high']:+.1%}]" for key in KEYS)
        print(f"{row['group']:14s} {row['users']:6,d} users ({args.by} {row['min']:,.0f}-{row['max']:,.0f})  {cells}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"data": str(args.data), "runs": [str(r) for r in args.runs], "by": args.by,
                                    "rows": rows}, indent=2))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
