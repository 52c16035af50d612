"""Log-uniform (Zipfian) negative sampler over items ranked by frequency, for the sampled softmax.

Papers §3.3 "Loss function": j negatives C- are drawn by importance sampling, "log-uniform sampler w.r.t.
item frequencies", as TensorFlow's log_uniform_candidate_sampler does. Items are ranked by count (rank 0
is the most frequent) and rank r is drawn with

    P(r) = (log(r + 2) - log(r + 1)) / log(N + 1),   r = 0 .. N-1,

whose CDF is log(r + 2) / log(N + 1), so r = floor(exp(u * log(N + 1))) - 1 for u ~ U[0, 1) samples it
exactly. Rows are item vocabulary rows 1..N; row 0 (padding) is never drawn.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor


class LogUniformSampler:
    """Draws item rows with replacement; `log_q` gives the log-probability of one draw (log-Q correction)."""

    def __init__(self, counts: Sequence[int] | Tensor) -> None:
        self.update_counts(counts)

    @property
    def n_items(self) -> int:
        """N: item rows the sampler covers (rows 1..N)."""
        return int(self._rank_to_row.numel())

    def update_counts(self, counts: Sequence[int] | Tensor) -> None:
        """Re-rank items by `counts` (indexed by item row; counts[0] is padding and ignored).

        Ties keep row order (older rows first), so ranks are deterministic. Items with count 0 are still
        ranked, last: the online vocabulary holds items that have not been clicked yet.
        """
        counts_t = torch.as_tensor(counts, dtype=torch.float64).flatten()
        if counts_t.numel() < 2:
            raise ValueError("the sampler needs at least one item (counts holds padding row 0 only)")
        if bool((counts_t[1:] < 0).any()):
            raise ValueError("item counts must be non-negative")
        self._counts = counts_t.clone()
        n = counts_t.numel() - 1
        self._rank_to_row = torch.argsort(-counts_t[1:], stable=True) + 1
        self._row_to_rank = torch.empty(n + 1, dtype=torch.long)
        self._row_to_rank[0] = -1
        self._row_to_rank[self._rank_to_row] = torch.arange(n)
        r = torch.arange(n, dtype=torch.float64)
        self._log_p = torch.log(torch.log(r + 2) - torch.log(r + 1)) - math.log(math.log(n + 1))

    def probabilities(self) -> Tensor:
        """P(draw row) for rows 0..N (row 0 has probability 0); float64."""
        p = torch.zeros(self.n_items + 1, dtype=torch.float64)
        p[self._rank_to_row] = self._log_p.exp()
        return p

    def sample(self, j: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """j item rows (with replacement) and their log-probabilities, both on CPU."""
        if j < 1:
            raise ValueError(f"number of negatives must be at least 1, got {j}")
        n = self.n_items
        u = torch.rand(j, generator=generator, dtype=torch.float64)
        ranks = (torch.floor(torch.exp(u * math.log(n + 1))) - 1).long().clamp_(0, n - 1)
        return self._rank_to_row[ranks], self._log_p[ranks].float()

    def log_q(self, ids: Tensor) -> Tensor:
        """log P(draw id), on ids' device.

        Row 0 gets 0.0: it only ever appears as masked padding. Rows above N (the vocabulary grew since
        the last update_counts) get the probability of the last rank: they are new and unclicked.
        """
        flat = ids.detach().to("cpu", torch.long).flatten()
        ranks = self._row_to_rank[flat.clamp(0, self.n_items)]
        ranks = torch.where(flat > self.n_items, torch.full_like(ranks, self.n_items - 1), ranks)
        out = torch.where(flat == 0, torch.zeros((), dtype=torch.float64), self._log_p[ranks.clamp(min=0)])
        return out.float().reshape(ids.shape).to(ids.device)

    def state_dict(self) -> dict[str, Any]:
        return {"counts": self._counts.clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.update_counts(state["counts"])
