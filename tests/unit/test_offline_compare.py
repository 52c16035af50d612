"""`compare` with a side averaged over several runs (learner.offline.average_evaluations)."""

from __future__ import annotations

import numpy as np
import pytest

from learner.offline import RunError, average_evaluations, compare, format_comparison

SPLIT = {"data_dir": "var/world", "cut_ms": 10, "end_ms": 20, "test_days": 2.0, "holdout_days": 0.0}


def evaluation(variant: str, users: list[str], hr: list[float], run: str = "r", **split) -> dict:
    return {"variant": variant, "run": run, "users": users, "data": {**SPLIT, **split},
            "per_user": {"hr@50": hr, "mrr@50": [v / 4 for v in hr]}}


def test_each_users_value_is_the_mean_over_the_runs_on_the_users_all_runs_scored():
    one = evaluation("sdm", ["u1", "u2", "u3"], [1.0, 0.0, 1.0], run="s7")
    two = evaluation("sdm", ["u3", "u2", "u4"], [0.0, 1.0, 1.0], run="s8")  # other order, u1 / u4 unshared
    mean = average_evaluations([one, two])
    assert mean["users"] == ["u2", "u3"]
    assert mean["per_user"]["hr@50"] == [0.5, 0.5]
    assert mean["per_user"]["mrr@50"] == [0.125, 0.125]
    assert mean["runs"] == ["s7", "s8"] and mean["variant"] == "sdm"


def test_a_single_run_is_returned_unchanged():
    one = evaluation("xdm", ["u1"], [1.0])
    assert average_evaluations([one]) is one


def test_runs_of_other_variants_or_splits_are_refused_with_a_message():
    with pytest.raises(RunError, match="one variant"):
        average_evaluations([evaluation("sdm", ["u1"], [1.0]), evaluation("xdm", ["u1"], [1.0])])
    with pytest.raises(RunError, match="same log and split"):
        average_evaluations([evaluation("sdm", ["u1"], [1.0]), evaluation("sdm", ["u1"], [1.0], cut_ms=11)])


def test_compare_of_averaged_sides_is_compare_of_the_mean_values():
    rng = np.random.default_rng(0)
    users = [f"u{i}" for i in range(300)]
    base = rng.random(300) < 0.3
    runs_a = [evaluation("sdm", users, (base ^ (rng.random(300) < 0.2)).astype(float).tolist()) for _ in range(3)]
    runs_b = [evaluation("xdm", users, (base ^ (rng.random(300) < 0.1)).astype(float).tolist()) for _ in range(3)]
    averaged = compare(average_evaluations(runs_a), average_evaluations(runs_b), n_boot=300)
    by_hand_a = evaluation("sdm", users, np.mean([r["per_user"]["hr@50"] for r in runs_a], axis=0).tolist())
    by_hand_b = evaluation("xdm", users, np.mean([r["per_user"]["hr@50"] for r in runs_b], axis=0).tolist())
    single = compare(by_hand_a, by_hand_b, n_boot=300)
    assert averaged["lift"]["hr@50"] == pytest.approx(single["lift"]["hr@50"])
    assert averaged["runs"] == {"a": 3, "b": 3} and single["runs"] == {"a": 1, "b": 1}
    assert "per-user means of 3 run(s) of sdm and 3 of xdm" in format_comparison(averaged)
    assert "per-user means" not in format_comparison(single)
