"""Bootstrap intervals for offline evaluation: plain numpy on per-user metric values.

- `bootstrap_ci`: the mean of a metric over test users and its percentile-bootstrap interval
  (users resampled with replacement, `n_boot` times).
- `paired_lift`: the relative lift of model B over model A, mean(B) / mean(A) − 1 (Table 2's "+x%"),
  with a PAIRED bootstrap: each resample draws the same users for both models, so the interval reflects
  the per-user difference rather than two independent noises. `p_not_better` is the share of resamples
  whose lift is ≤ 0 (a one-sided bootstrap p-value for "B beats A").

Every function is seeded, so the same inputs give the same interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DEFAULT_BOOT = 2000
_CHUNK = 250  # resamples drawn at once: bounds memory at _CHUNK × users indices


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "low": self.low, "high": self.high}


@dataclass(frozen=True)
class Lift:
    a: float  # mean of the baseline A
    b: float  # mean of the candidate B
    lift: float  # mean(B) / mean(A) - 1; nan when mean(A) is 0
    low: float
    high: float
    p_not_better: float  # share of paired resamples with lift <= 0
    users: int

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def as_dict(self) -> dict[str, float]:
        return {"a": self.a, "b": self.b, "lift": self.lift, "low": self.low, "high": self.high,
                "p_not_better": self.p_not_better, "users": self.users}


def bootstrap_ci(values: np.ndarray | list[float], n_boot: int = DEFAULT_BOOT, alpha: float = 0.05,
                 seed: int = 0) -> Interval:
    """Mean of `values` and its (1 − alpha) percentile-bootstrap interval."""
    x = _as_array(values)
    means = np.concatenate([x[idx].mean(axis=1) for idx in _resamples(len(x), n_boot, seed)])
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return Interval(float(x.mean()), float(low), float(high))


def paired_lift(a: np.ndarray | list[float], b: np.ndarray | list[float], n_boot: int = DEFAULT_BOOT,
                alpha: float = 0.05, seed: int = 0) -> Lift:
    """Relative lift of B over A on the same users (a[i] and b[i] belong to user i), paired bootstrap."""
    xa, xb = _as_array(a), _as_array(b)
    if xa.shape != xb.shape:
        raise ValueError(f"paired values need the same users: got {len(xa)} and {len(xb)} values")
    mean_a, mean_b = float(xa.mean()), float(xb.mean())
    if mean_a == 0:
        return Lift(mean_a, mean_b, math.nan, math.nan, math.nan, math.nan, len(xa))
    lifts = []
    for idx in _resamples(len(xa), n_boot, seed):
        ma, mb = xa[idx].mean(axis=1), xb[idx].mean(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            lifts.append(np.where(ma > 0, mb / ma - 1, np.where(mb > 0, np.inf, 0.0)))
    boot = np.concatenate(lifts)
    low, high = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return Lift(mean_a, mean_b, mean_b / mean_a - 1, float(low), float(high), float(np.mean(boot <= 0)), len(xa))


def random_hit_rate(n_items: int, n_labels: int, k: int) -> float:
    """P(at least one of n_labels distinct items is in a uniformly random top-k of n_items): HR@k of
    random recall, 1 − C(n − L, k) / C(n, k)."""
    if n_labels <= 0 or k <= 0:
        return 0.0
    if k + n_labels > n_items:
        return 1.0
    miss = 1.0
    for i in range(n_labels):
        miss *= (n_items - k - i) / (n_items - i)
    return 1.0 - miss


def _as_array(values: np.ndarray | list[float]) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError("bootstrap needs a non-empty 1-D array of per-user values")
    return x


def _resamples(n: int, n_boot: int, seed: int):
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    done = 0
    while done < n_boot:
        size = min(_CHUNK, n_boot - done)
        yield rng.integers(0, n, size=(size, n))
        done += size
