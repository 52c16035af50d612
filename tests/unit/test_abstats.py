import numpy as np

from replay.abstats import (arm_estimate, compare_means, compare_paired, compare_ratios, paired_p_value, ratio_estimate,
                            welch_p_value)


def test_the_test_is_calibrated_on_equal_arms():
    rng = np.random.default_rng(1)
    p = np.array([welch_p_value(rng.binomial(1, 0.3, 400).astype(float), rng.binomial(1, 0.3, 400).astype(float))
                  for _ in range(2000)])
    assert 0.035 <= np.mean(p < 0.05) <= 0.07  # about 5 % false positives at alpha = 0.05


def test_lift_interval_and_test_agree_on_equal_arms():
    rng = np.random.default_rng(5)
    a, b = rng.binomial(1, 0.3, 1000).astype(float), rng.binomial(1, 0.3, 1000).astype(float)
    c = compare_means(a, b, ("a", "b"), n_boot=500)
    assert c.low < c.lift < c.high
    assert (c.low > 0 or c.high < 0) == c.significant


def test_a_real_difference_is_found_with_an_interval_excluding_zero():
    rng = np.random.default_rng(2)
    a, b = rng.binomial(1, 0.30, 2000).astype(float), rng.binomial(1, 0.36, 2000).astype(float)
    c = compare_means(a, b, ("a", "b"))
    assert c.significant and c.low > 0 and abs(c.lift - 0.2) < 0.1


def test_arm_interval_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(3)
    covered = 0
    for seed in range(100):
        est = arm_estimate(rng.normal(1.0, 1.0, 200), seed=seed, n_boot=300)
        covered += est.low <= 1.0 <= est.high
    assert 88 <= covered <= 100


def test_ratio_metric_uses_sums_and_detects_a_ctr_lift():
    rng = np.random.default_rng(4)
    shown_a, shown_b = rng.integers(5, 50, 800), rng.integers(5, 50, 800)
    clicks_a, clicks_b = rng.binomial(shown_a, 0.05), rng.binomial(shown_b, 0.065)
    est = ratio_estimate(clicks_a, shown_a)
    assert abs(est.mean - clicks_a.sum() / shown_a.sum()) < 1e-12 and est.low < est.mean < est.high
    c = compare_ratios(clicks_a, shown_a, clicks_b, shown_b, ("a", "b"))
    assert c.significant and c.low > 0


def test_welch_p_value_extremes():
    x = np.array([1.0, 1.0, 1.0])
    assert welch_p_value(x, x) == 1.0
    assert welch_p_value(np.zeros(50) + np.arange(50) % 2, np.ones(50) * 5) < 1e-6


def test_paired_test_is_calibrated_when_the_arms_do_not_differ():
    rng = np.random.default_rng(7)
    flagged = 0
    for _ in range(1000):
        user = rng.beta(2, 3, 300)  # users differ a lot; the arms do not
        a, b = rng.binomial(4, user) / 4, rng.binomial(4, user) / 4
        flagged += paired_p_value(a, b) < 0.05
    assert 0.03 <= flagged / 1000 <= 0.075


def test_pairing_finds_a_small_lift_that_the_unpaired_test_misses():
    rng = np.random.default_rng(8)
    user = rng.beta(2, 3, 1500)  # between-user spread dwarfs the 3-point lift
    a = np.clip(user + rng.normal(0, 0.05, 1500), 0, 1)
    b = np.clip(user + 0.03 + rng.normal(0, 0.05, 1500), 0, 1)
    paired = compare_paired(a, b, ("a", "b"), n_boot=500)
    assert paired.significant and paired.low > 0 and abs(paired.lift - 0.03 / a.mean()) < 0.02
    unpaired = compare_means(a, b, ("a", "b"), n_boot=500)
    assert (unpaired.high - unpaired.low) > 3 * (paired.high - paired.low)


def test_identical_paired_arms_have_zero_lift_and_no_difference():
    x = np.random.default_rng(9).random(50)
    c = compare_paired(x, x.copy(), ("a", "b"), n_boot=200)
    assert (c.lift, c.low, c.high, c.p_value, c.significant) == (0.0, 0.0, 0.0, 1.0, False)
