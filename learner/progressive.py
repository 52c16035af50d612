"""Progressive validation: HR@50 and MRR@50 of a batch against its own labels, before the model trains on it.

Up to `ValidationSampling.full_max_items` items it scores every sample against every item, as the papers'
full-sort evaluation does (exact). Above that, scoring B x N items costs what the catalogue costs (256 x 30 M
scores = 31 GB a step, docs/capacity.md §7), so it scores a sample of the batch against a sample of the
catalogue instead, at a cost that does not grow with N (`validate_sampled`, whose docstring states its
variance and bias).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from learner.batch import Batch
from learner.metrics import mean_metrics, metrics_at
from xdm.config import LearnerConfig

VALIDATION_N = 50
ITEM_BLOCK = 64  # sampled items come in runs of this many consecutive rows: a random row costs a cache and TLB miss


@dataclass(frozen=True)
class ValidationSampling:
    """When and how progressive validation samples (LearnerConfig's validation_* fields)."""

    full_max_items: int = 100_000  # up to this many items: every sample against every item (exact)
    users: int = 16  # above it: samples of a batch scored, drawn without replacement
    items: int = 400_000  # above it: items they are scored against, each row with probability items / N; all when fewer

    def __post_init__(self) -> None:
        if self.full_max_items < 1 or self.users < 1 or self.items < 1:
            raise ValueError(f"validation sampling needs positive sizes, got {self}")


def validation_sampling(lc: LearnerConfig) -> ValidationSampling:
    return ValidationSampling(lc.validation_full_max_items, lc.validation_users, lc.validation_items)


@torch.no_grad()
def validate_every_item(model, batch: Batch) -> tuple[float, float]:
    """Exact HR@50, MRR@50 over the batch: every sample ranks every item row."""
    scores = model.full_sort_predict(batch)
    top = torch.topk(scores, min(VALIDATION_N, scores.shape[1] - 1), dim=1).indices.cpu().tolist()
    labels = batch.labels[..., 0].cpu().tolist()
    lengths = batch.label_len.cpu().tolist()
    rows = [metrics_at(t, lab[:n], VALIDATION_N) for t, lab, n in zip(top, labels, lengths) if n > 0]
    m = mean_metrics(rows)
    return m.hr, m.mrr


@torch.no_grad()
def validate_sampled(model, batch: Batch, sampling: ValidationSampling,
                     generator: torch.Generator) -> tuple[float, float]:
    """HR@50, MRR@50 estimated on u = sampling.users samples of the batch and S = sampling.items items.

    HR@50 and MRR@50 of a sample depend only on r, the rank of its best-scoring label: 1 + the number A of
    other items that score above it (the other labels never do); `sampled_ranks` estimates it.

    Samples: u of the batch's samples with labels, uniformly without replacement, so the mean over them
    is unbiased for the batch's mean; its variance for HR is p(1 - p)/u x (B - u)/(B - 1) <= 0.25/u
    (sd <= 0.125 a step at u = 16, <= 0.018 for the online learner's mean over 50 steps).

    Items: with N <= S every item row is scored, so r is exact and so are the metrics. With N > S, S rows
    are drawn as a systematic sample in runs of ITEM_BLOCK consecutive rows (a random start, then a run every
    N / (S / ITEM_BLOCK) rows, cyclically), so every row is in the sample with probability exactly S / N; k of
    them score above the best label, and r^ = 1 + k N / S is unbiased for r. Its sd is about
    sqrt((r - 1) N / S) when neighbouring rows (items first seen at about the same time) score unrelatedly,
    as with uniform draws, and up to sqrt(ITEM_BLOCK) times that in the worst case (whole runs above or
    below). The metrics built from r^ are biased: a sample counts as a hit when k <= floor(49 S / N), with
    probability about BinomCDF(floor(49 S / N); S, (r - 1) / N) at rank r, a soft step instead of
    1[r <= 50]. Defaults (S = 400 k): at N = 10 M (k <= 1) a label at rank 20 counts as a hit with
    probability 0.82, at rank 50 0.42, 100 0.09, 200 0.003; at N = 30 M (k = 0, probability ~ exp(-(r - 1)
    S / N)) 0.78, 0.52, 0.27, 0.07. Labels just below the cut and just above it trade places, so HR@50 is
    close where label ranks are spread evenly around 50 and off where they are not. The step's middle (the
    rank counted as a hit half the time) lies between ranks 34 and 82 while N <= 70 S (42 at N = 10 M, 52 at
    30 M) and near 0.7 N / S beyond: raise S with the catalogue to keep the figure meaning HR@50 (the cost
    grows with u x S). MRR is coarser still, since r^ moves in steps of N / S.
    """
    ranks = sampled_ranks(model, batch, sampling, generator)
    if ranks.numel() == 0:
        return 0.0, 0.0
    hit = ranks <= VALIDATION_N
    return float(hit.double().mean()), float(torch.where(hit, 1.0 / ranks, 0.0).mean())


@torch.no_grad()
def sampled_ranks(model, batch: Batch, sampling: ValidationSampling, generator: torch.Generator) -> Tensor:
    """Rank (1 = top) of the best-scoring label of up to sampling.users samples with labels, float64:
    exact when the catalogue has at most sampling.items items, else 1 + k N / S (see validate_sampled)."""
    labels = batch.labels[..., 0]
    positions = torch.arange(labels.shape[1], device=labels.device)
    is_label = (positions < batch.label_len.unsqueeze(1)) & (labels != 0)
    with_labels = torch.nonzero(batch.label_len > 0).flatten().cpu()
    picked = with_labels[torch.randperm(with_labels.numel(), generator=generator)[: sampling.users]]
    if picked.numel() == 0:
        return torch.zeros(0, dtype=torch.float64)
    picked = picked.to(labels.device)
    sub = dataclasses.replace(batch, **{f.name: getattr(batch, f.name)[picked] for f in dataclasses.fields(batch)})
    z = model.user_vector(sub)
    items = model.item_vectors()
    n = items.shape[0] - 1  # rows 1..N; row 0 is padding
    label_scores = (z.unsqueeze(1) * items[labels[picked]]).sum(-1)
    best = label_scores.masked_fill(~is_label[picked], -math.inf).max(dim=1).values
    if n <= sampling.items:
        return 1.0 + _count_above(z, items, None, best).double().cpu()
    drawn = systematic_rows(n, sampling.items, generator).to(items.device)
    return 1.0 + _count_above(z, items, drawn, best).double().cpu() * (n / drawn.numel())


def systematic_rows(n: int, size: int, generator: torch.Generator) -> Tensor:
    """About `size` of the rows 1..n (fewer than n), each with probability exactly (rows returned) / n: runs of
    ITEM_BLOCK consecutive rows at a random start and then evenly spaced around the rows, cyclically."""
    block = min(ITEM_BLOCK, size)
    runs = size // block
    stride = n / runs  # >= block, since n > size
    start = float(torch.rand((), generator=generator, dtype=torch.float64)) * stride
    firsts = (start + torch.arange(runs, dtype=torch.float64) * stride).long()
    return ((firsts.unsqueeze(1) + torch.arange(block)) % n + 1).flatten()


def _count_above(z: Tensor, items: Tensor, rows: Tensor | None, best: Tensor, chunk: int = 131_072) -> Tensor:
    """Per user, how many item rows (`rows`, or every row but padding when None) score strictly above
    `best`; a chunk of rows at a time, so neither the scores nor the gathered vectors grow with N or S."""
    total = items.shape[0] - 1 if rows is None else rows.numel()
    above = torch.zeros(z.shape[0], dtype=torch.long, device=z.device)
    for start in range(0, total, chunk):
        vectors = items[1 + start: 1 + start + chunk] if rows is None else items[rows[start: start + chunk]]
        above += (z @ vectors.T > best.unsqueeze(1)).sum(dim=1)
    return above
