"""bench/lift_by_thirds.py: users cut into thirds by a per-user measure, a paired lift within each third."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from learner.offline import training_label_counts

_PATH = Path(__file__).resolve().parents[2] / "bench" / "lift_by_thirds.py"
_spec = importlib.util.spec_from_file_location("lift_by_thirds", _PATH)
thirds_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(thirds_bench)


def _run(values: np.ndarray) -> dict:
    return {"per_user": {key: list(values) for key in thirds_bench.KEYS}}


def test_a_gain_on_the_lowest_users_shows_in_the_lowest_third_only():
    rng = np.random.default_rng(3)
    measure = rng.permutation(np.arange(300, dtype=float))  # distinct values: thirds of 100 users each
    a = (rng.random(300) < 0.3).astype(float)
    b = a.copy()
    low = measure < 100
    b[low & (a == 0)] = 1.0  # B hits every low user A missed; elsewhere the same
    rows = thirds_bench.lifts_by_third(_run(a), _run(b), measure)
    assert [row["users"] for row in rows] == [100, 100, 100]
    assert [(row["min"], row["max"]) for row in rows] == [(0.0, 99.0), (100.0, 199.0), (200.0, 299.0)]
    lowest, middle, highest = (row["hr@50"] for row in rows)
    assert lowest["b"] == 1.0 and lowest["lift"] == pytest.approx(1 / a[low].mean() - 1)
    assert lowest["low"] > 0
    assert middle["lift"] == highest["lift"] == 0.0


def test_tied_values_stay_in_one_third_and_an_empty_third_is_left_out():
    measure = np.array([1.0] * 8 + [5.0] * 2)  # both cut points fall on 1: the middle third is empty
    a = np.zeros(10)
    rows = thirds_bench.lifts_by_third(_run(a), _run(a + 1), measure)
    assert [(row["group"], row["users"]) for row in rows] == [("lowest third", 8), ("highest third", 2)]


class _Table:
    def __init__(self, user_ids, labels, unclicked):
        self.user_ids, self.labels, self.unclicked = user_ids, labels, unclicked

    def __len__(self):
        return len(self.user_ids)

    def label_items(self, i):
        return self.labels[i]

    def length(self, kind, i):
        assert kind == "unclicked"
        return self.unclicked[i]


class _Split:
    train = _Table(["u1", "u1", "u2"], [["x", "y"], ["x"], ["x", "z"]], [0, 0, 0])
    test = _Table(["u1", "u3"], [["x", "y", "new"], ["z"]], [7, 0])


def test_the_measures_read_the_split():
    assert training_label_counts(_Split()) == {"x": 3, "y": 1, "z": 1}
    assert list(thirds_bench.label_rarity(_Split())) == [1.0, 1.0]  # median of 3, 1, 0; then of 1
    assert list(thirds_bench.user_samples(_Split())) == [2.0, 0.0]  # u3 has no training sample
    assert list(thirds_bench.unclicked_length(_Split())) == [7.0, 0.0]
    assert set(thirds_bench.MEASURES) == {"label-rarity", "user-samples", "unclicked"}
