"""Bootstrap intervals and paired lift (learner/evaluation_stats.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from learner.evaluation_stats import bootstrap_ci, paired_lift, random_hit_rate


def test_bootstrap_interval_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(3)
    true_p = 0.3
    covered = 0
    trials = 120
    for t in range(trials):
        hits = (rng.random(400) < true_p).astype(float)  # HR-like 0/1 per-user values
        ci = bootstrap_ci(hits, n_boot=400, seed=t)
        assert ci.low <= ci.mean <= ci.high
        covered += ci.low <= true_p <= ci.high
    assert 0.88 <= covered / trials <= 0.99


def test_bootstrap_interval_narrows_with_more_users_and_is_seeded():
    rng = np.random.default_rng(0)
    small, large = rng.random(100), rng.random(10_000)
    ci_small, ci_large = bootstrap_ci(small, 500), bootstrap_ci(large, 500)
    assert ci_large.high - ci_large.low < (ci_small.high - ci_small.low) / 5
    assert bootstrap_ci(small, 500, seed=4) == bootstrap_ci(small, 500, seed=4)


def test_paired_lift_sign_and_interval_follow_the_better_model():
    rng = np.random.default_rng(1)
    a = (rng.random(3000) < 0.30).astype(float)
    better = np.maximum(a, (rng.random(3000) < 0.05).astype(float))  # B hits wherever A does, and more
    lift = paired_lift(a, better, n_boot=500)
    assert lift.lift > 0 and lift.low > 0 and lift.excludes_zero
    assert lift.lift == pytest.approx(better.mean() / a.mean() - 1)
    assert lift.p_not_better < 0.01
    worse = paired_lift(better, a, n_boot=500)
    assert worse.lift < 0 and worse.high < 0


def test_paired_lift_of_a_model_against_itself_is_zero_and_pairing_narrows_the_interval():
    rng = np.random.default_rng(2)
    a = rng.random(2000)
    same = paired_lift(a, a, n_boot=300)
    assert same.lift == 0 and same.low == 0 and same.high == 0
    b = a + rng.normal(0.01, 0.01, size=2000)  # correlated per user, as two models on the same users are
    paired = paired_lift(a, b, n_boot=500)
    independent = paired_lift(a, rng.permutation(b), n_boot=500)  # same means, pairing broken
    assert paired.high - paired.low < (independent.high - independent.low) / 5


def test_paired_lift_rejects_unpaired_input_and_reports_nan_for_a_zero_baseline():
    with pytest.raises(ValueError, match="same users"):
        paired_lift([1.0, 0.0], [1.0])
    zero = paired_lift([0.0, 0.0], [1.0, 0.0])
    assert math.isnan(zero.lift)
    with pytest.raises(ValueError):
        bootstrap_ci([])


def test_random_hit_rate_matches_the_combinatorial_formula_and_a_simulation():
    assert random_hit_rate(100, 1, 10) == pytest.approx(0.10)
    assert random_hit_rate(100, 2, 10) == pytest.approx(1 - (90 / 100) * (89 / 99))
    assert random_hit_rate(10, 5, 8) == 1.0
    assert random_hit_rate(100, 0, 10) == 0.0
    rng = np.random.default_rng(0)
    sims = [bool({0, 1, 2} & set(rng.permutation(200)[:50])) for _ in range(4000)]
    assert np.mean(sims) == pytest.approx(random_hit_rate(200, 3, 50), abs=0.03)
