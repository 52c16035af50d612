"""Top-N recall metrics over a user's next k clicks (the papers' HR, MRR, R and F1 at N).

The papers name these metrics without formulas; we use the common definitions of the sequential
recommendation literature they cite (SDM [25]), per test sample with label set C (the next k clicks):
- HR@N  = 1 if any label is in the top N, else 0
- MRR@N = 1 / rank of the first label in the top N (0 if none)
- R@N   = |top N ∩ C| / |C|
- P@N   = |top N ∩ C| / N, and F1@N = 2·P·R / (P + R) (0 when both are 0)
Each is averaged over samples. Pure functions on ranked id lists so the stream, offline evaluation and
replay share them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence


@dataclass(frozen=True)
class SampleMetrics:
    hr: float
    mrr: float
    recall: float
    f1: float


def metrics_at(ranked: Sequence, labels: Iterable, n: int) -> SampleMetrics:
    """Metrics of one ranked list (best first) against the label set, cut at n."""
    label_set = set(labels)
    if not label_set:
        raise ValueError("a sample needs at least one label to be scored")
    top = ranked[:n]
    hits = 0
    first_rank = 0
    seen = set()
    for rank, item in enumerate(top, start=1):
        if item in label_set and item not in seen:
            hits += 1
            seen.add(item)
            if not first_rank:
                first_rank = rank
    recall = hits / len(label_set)
    precision = hits / n
    f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
    return SampleMetrics(hr=float(hits > 0), mrr=1.0 / first_rank if first_rank else 0.0, recall=recall, f1=f1)


def mean_metrics(rows: Sequence[SampleMetrics]) -> SampleMetrics:
    if not rows:
        return SampleMetrics(0.0, 0.0, 0.0, 0.0)
    n = len(rows)
    return SampleMetrics(hr=sum(r.hr for r in rows) / n, mrr=sum(r.mrr for r in rows) / n,
                         recall=sum(r.recall for r in rows) / n, f1=sum(r.f1 for r in rows) / n)
