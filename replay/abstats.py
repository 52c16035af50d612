"""Statistics of an A/B comparison between arms with disjoint users (sticky assignment by user hash), or
with the same users (a paired replay, below).

Users are the unit of randomisation, so every estimator resamples users, never single requests (requests
of one user are correlated). For a metric m with per-user values x_u (the mean over that user's scored
requests) in arm A and y_u in arm B:

- arm mean:        mean_A = (1/|A|) Σ_u x_u, with a percentile-bootstrap 95 % interval (users resampled)
- relative lift:   lift = mean_B / mean_A − 1; 95 % interval from independent bootstrap resamples of the
                   users of each arm (unpaired: the arms hold different users)
- p-value:         two-sided Welch t-test of mean_B − mean_A (unequal variances, normal approximation of
                   the t distribution, fine at the hundreds of users per arm these reports use)

Paired replay (every sampled request asks every arm, so each user has a value in each arm): the lift's
interval resamples users once for both arms (paired bootstrap), and the p-value is the two-sided paired
test of the per-user differences d_u = y_u − x_u (mean(d) / (sd(d)/√n), normal reference). Pairing
removes the between-user variance that dominates the unpaired interval.

For CTR (a ratio of sums), the per-user values are pairs (clicks_u, impressions_u) and a resample's CTR
is Σ clicks / Σ impressions over the resampled users (the cluster bootstrap of a ratio metric); the
p-value uses the delta-method variance of each arm's ratio.
All functions are seeded: the same inputs give the same intervals.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from learner.evaluation_stats import paired_lift

N_BOOT = 2000


@dataclass(frozen=True)
class ArmEstimate:
    mean: float
    low: float
    high: float
    users: int


@dataclass(frozen=True)
class Comparison:
    baseline: str
    candidate: str
    lift: float  # mean_B / mean_A - 1
    low: float
    high: float
    p_value: float  # two-sided
    significant: bool  # p_value < alpha

    def as_dict(self) -> dict:
        return asdict(self)


def arm_estimate(values: np.ndarray, seed: int = 0, n_boot: int = N_BOOT) -> ArmEstimate:
    x = _array(values)
    boot = _boot_means(x, seed, n_boot)
    low, high = np.quantile(boot, [0.025, 0.975])
    return ArmEstimate(float(x.mean()), float(low), float(high), len(x))


def compare_means(a: np.ndarray, b: np.ndarray, names: tuple[str, str], alpha: float = 0.05, seed: int = 0,
                  n_boot: int = N_BOOT) -> Comparison:
    """Lift of B over A with a bootstrap interval, and a Welch test of the difference."""
    x, y = _array(a), _array(b)
    ba, bb = _boot_means(x, seed, n_boot), _boot_means(y, seed + 1, n_boot)
    lifts = _ratio_lifts(ba, bb)
    low, high = np.quantile(lifts, [alpha / 2, 1 - alpha / 2]) if len(lifts) else (math.nan, math.nan)
    p = welch_p_value(x, y)
    return Comparison(names[0], names[1], _lift(x.mean(), y.mean()), float(low), float(high), p, p < alpha)


def compare_paired(a: np.ndarray, b: np.ndarray, names: tuple[str, str], alpha: float = 0.05, seed: int = 0,
                   n_boot: int = N_BOOT) -> Comparison:
    """Lift of B over A on the same users (a[i], b[i] of user i): paired bootstrap (the offline
    evaluation's `paired_lift`, resamples drawn in bounded chunks) and paired test."""
    x, y = _array(a), _array(b)
    lift = paired_lift(x, y, n_boot=n_boot, alpha=alpha, seed=seed)
    p = paired_p_value(x, y)
    return Comparison(names[0], names[1], _lift(x.mean(), y.mean()), lift.low, lift.high, p, p < alpha)


def paired_p_value(x: np.ndarray, y: np.ndarray) -> float:
    """Two-sided p-value of H0: E[y − x] = 0 over paired values, normal reference."""
    d = np.asarray(y, dtype=float) - np.asarray(x, dtype=float)
    se = d.std(ddof=1) / math.sqrt(len(d)) if len(d) > 1 else 0.0
    if se == 0:
        return 1.0 if d.mean() == 0 else 0.0
    return _two_sided_normal(d.mean() / se)


def compare_ratios(clicks_a: np.ndarray, shown_a: np.ndarray, clicks_b: np.ndarray, shown_b: np.ndarray,
                   names: tuple[str, str], alpha: float = 0.05, seed: int = 0, n_boot: int = N_BOOT) -> Comparison:
    """CTR lift of B over A (cluster bootstrap over users) and a delta-method z-test."""
    ra, rb = _boot_ratios(clicks_a, shown_a, seed, n_boot), _boot_ratios(clicks_b, shown_b, seed + 1, n_boot)
    lifts = _ratio_lifts(ra, rb)
    low, high = np.quantile(lifts, [alpha / 2, 1 - alpha / 2]) if len(lifts) else (math.nan, math.nan)
    (ctr_a, var_a), (ctr_b, var_b) = _ratio_and_var(clicks_a, shown_a), _ratio_and_var(clicks_b, shown_b)
    p = _two_sided_normal((ctr_b - ctr_a) / math.sqrt(var_a + var_b)) if var_a + var_b > 0 else 1.0
    return Comparison(names[0], names[1], _lift(ctr_a, ctr_b), float(low), float(high), p, p < alpha)


def ratio_estimate(clicks: np.ndarray, shown: np.ndarray, seed: int = 0, n_boot: int = N_BOOT) -> ArmEstimate:
    boot = _boot_ratios(clicks, shown, seed, n_boot)
    low, high = np.quantile(boot, [0.025, 0.975])
    return ArmEstimate(float(np.sum(clicks) / np.sum(shown)), float(low), float(high), len(clicks))


def welch_p_value(x: np.ndarray, y: np.ndarray) -> float:
    """Two-sided p-value of H0: E[x] = E[y], Welch's statistic with a normal reference."""
    vx = x.var(ddof=1) / len(x) if len(x) > 1 else 0.0
    vy = y.var(ddof=1) / len(y) if len(y) > 1 else 0.0
    if vx + vy == 0:
        return 1.0 if x.mean() == y.mean() else 0.0
    return _two_sided_normal((y.mean() - x.mean()) / math.sqrt(vx + vy))


def _two_sided_normal(z: float) -> float:
    return math.erfc(abs(z) / math.sqrt(2))


def _ratio_and_var(clicks: np.ndarray, shown: np.ndarray) -> tuple[float, float]:
    """Ratio of sums and its delta-method variance over users (clusters)."""
    c, s = np.asarray(clicks, dtype=float), np.asarray(shown, dtype=float)
    n = len(c)
    r = c.sum() / s.sum()
    if n < 2:
        return r, 0.0
    residual = c - r * s
    return r, float(residual.var(ddof=1) * n / s.sum() ** 2)


def _boot_means(x: np.ndarray, seed: int, n_boot: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.array([x[rng.integers(0, len(x), len(x))].mean() for _ in range(n_boot)])


def _boot_ratios(clicks: np.ndarray, shown: np.ndarray, seed: int, n_boot: int) -> np.ndarray:
    c, s = np.asarray(clicks, dtype=float), np.asarray(shown, dtype=float)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(c), len(c))
        total = s[idx].sum()
        out.append(c[idx].sum() / total if total else math.nan)
    return np.array(out)


def _ratio_lifts(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    keep = np.isfinite(a) & np.isfinite(b) & (a > 0)
    return b[keep] / a[keep] - 1


def _lift(a: float, b: float) -> float:
    return float(b / a - 1) if a else math.nan


def _array(values) -> np.ndarray:
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError("an arm needs at least one user with a value")
    return x
