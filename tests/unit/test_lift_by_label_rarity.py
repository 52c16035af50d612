"""bench/lift_by_label_rarity.py: users cut into thirds by label rarity, a paired lift within each third."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from learner.offline import training_label_counts

_PATH = Path(__file__).resolve().parents[2] / "bench" / "lift_by_label_rarity.py"
_spec = importlib.util.spec_from_file_location("lift_by_label_rarity", _PATH)
rarity_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rarity_bench)


def _run(values: np.ndarray) -> dict:
    return {"per_user": {key: list(values) for key in rarity_bench.KEYS}}


def test_a_gain_on_the_rarest_users_shows_in_the_rarest_third_only():
    rng = np.random.default_rng(3)
    rarity = rng.permutation(np.arange(300, dtype=float))  # distinct counts: thirds of 100 users each
    a = (rng.random(300) < 0.3).astype(float)
    b = a.copy()
    rare = rarity < 100
    b[rare & (a == 0)] = 1.0  # B hits every rare user A missed; elsewhere the same
    rows = rarity_bench.lifts_by_third(_run(a), _run(b), rarity)
    assert [row["users"] for row in rows] == [100, 100, 100]
    assert [row["max_median_label_count"] for row in rows] == [99.0, 199.0, 299.0]
    rarest, middle, frequent = (row["hr@50"] for row in rows)
    assert rarest["b"] == 1.0 and rarest["lift"] == pytest.approx(1 / a[rare].mean() - 1)
    assert rarest["low"] > 0
    assert middle["lift"] == frequent["lift"] == 0.0


def test_label_rarity_is_the_median_training_label_count_of_a_users_labels():
    class Table:
        def __init__(self, labels):
            self.labels = labels

        def __len__(self):
            return len(self.labels)

        def label_items(self, i):
            return self.labels[i]

    class Split:
        train = Table([["x", "y"], ["x"], ["x", "z"]])
        test = Table([["x", "y", "new"], ["z"]])

    counts = training_label_counts(Split())
    assert counts == {"x": 3, "y": 1, "z": 1}
    assert list(rarity_bench.user_rarity(Split(), counts)) == [1.0, 1.0]  # median of 3, 1, 0; then of 1
