"""Log-uniform (Zipfian) negative sampler over items ranked by frequency, for the sampled softmax.

Papers §3.3 "Loss function": j negatives C- are drawn by importance sampling, "log-uniform sampler w.r.t.
item frequencies", as TensorFlow's log_uniform_candidate_sampler does. Items are ranked by count (rank 0
is the most frequent) and rank r is drawn with

    P(r) = (log(r + 2) - log(r + 1)) / log(N + 1),   r = 0 .. N-1,

whose CDF is log(r + 2) / log(N + 1), so r = floor(exp(u * log(N + 1))) - 1 for u ~ U[0, 1) samples it
exactly. Rows are item vocabulary rows 1..N; row 0 (padding) is never drawn.

The ranking is kept exact as counts change, at a cost that follows the rows that changed, not N (at 30 M
items a re-rank by argsort took ~21 s a step, docs/capacity.md §7). Ranks are a permutation split into
buckets of equal count, highest count first; a bucket is a run of ranks [first, last]. An item whose
count rises swaps with the first item of its bucket, which makes it the boundary with the bucket above,
and then passes over each non-empty bucket between its old and new count the same way (one swap each):
a +1 costs O(1), and a fall (eviction resets a count to 0) costs one swap per non-empty bucket passed.

Ties: `update_counts` (a full ranking) orders equal counts by row (older rows first); `set_counts` then
keeps every bucket's members but not their order: an item that rises joins the END of its new bucket
(after the items that had that count before it), one that falls joins the FRONT, and the swaps reorder the
bucket it left. So ties follow the history of updates: deterministic for the same calls in the same order,
saved by `state_dict`, and any tie order gives the same log-uniform law over a ranking by count.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor


class LogUniformSampler:
    """Draws item rows with replacement; `log_q` gives the log-probability of one draw (log-Q correction)."""

    def __init__(self, counts: Sequence[int] | Tensor | np.ndarray) -> None:
        self.update_counts(counts)

    @property
    def n_items(self) -> int:
        """N: item rows the sampler covers (rows 1..N)."""
        return self._n

    # --- ranking

    def update_counts(self, counts: Sequence[int] | Tensor | np.ndarray) -> None:
        """Rank items from scratch by `counts` (indexed by item row; counts[0] is padding and ignored): O(N log N).

        Ties keep row order (older rows first). Items with count 0 are still ranked, last: the online
        vocabulary holds items that have not been clicked yet.
        """
        counts_a = _as_counts(counts)
        if counts_a.size < 2:
            raise ValueError("the sampler needs at least one item (counts holds padding row 0 only)")
        counts_a[0] = 0
        order = np.argsort(-counts_a[1:], kind="stable") + 1
        self._install(counts_a, order)

    def set_counts(self, rows: Sequence[int], counts: Sequence[int]) -> None:
        """New counts for some item rows, applied in the given order; rows above N grow the sampler first.

        Cost: O(len(rows)) for counts that rise by one, plus one swap per non-empty count passed by larger
        moves; independent of N. Pass rows in a fixed order (the trainer sorts them) for reproducible ties.
        """
        if len(rows) != len(counts):
            raise ValueError(f"set_counts needs one count per row, got {len(rows)} rows and {len(counts)} counts")
        if not len(rows):
            return
        if min(rows) < 1:
            raise ValueError("item rows start at 1 (row 0 is padding)")
        if min(counts) < 0:
            raise ValueError("item counts must be non-negative")
        self.grow(max(rows))
        for row, count in zip(rows, counts):
            self._move(int(row), int(count))

    def grow(self, n_items: int) -> None:
        """Cover rows up to `n_items`; the new rows have count 0 and rank last, in row order. O(rows added)."""
        n = self._n
        if n_items <= n:
            return
        self._reserve(n_items)
        new_rows = np.arange(n + 1, n_items + 1)
        self._order[n:n_items] = new_rows
        self._rank[new_rows] = np.arange(n, n_items)
        self._counts[new_rows] = 0
        if 0 not in self._first:  # count 0 is the lowest, so its bucket is always the last one
            self._first[0] = n
        self._last[0] = n_items - 1
        self._n = n_items

    # --- drawing

    def probabilities(self) -> Tensor:
        """P(draw row) for rows 0..N (row 0 has probability 0); float64."""
        p = torch.zeros(self._n + 1, dtype=torch.float64)
        p[torch.from_numpy(self._order[: self._n])] = (self._log_w_head() - self._log_norm()).exp()
        return p

    def sample(self, j: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """j item rows (with replacement) and their log-probabilities, both on CPU."""
        if j < 1:
            raise ValueError(f"number of negatives must be at least 1, got {j}")
        n = self._n
        u = torch.rand(j, generator=generator, dtype=torch.float64)
        ranks = (torch.floor(torch.exp(u * math.log(n + 1))) - 1).long().clamp_(0, n - 1)
        rows = torch.from_numpy(self._order[:n])[ranks]
        return rows, (self._log_w_head()[ranks] - self._log_norm()).float()

    def log_q(self, ids: Tensor) -> Tensor:
        """log P(draw id), on ids' device.

        Row 0 gets 0.0: it only ever appears as masked padding. Rows above N (the vocabulary grew since
        the sampler last followed it) get the probability of the last rank: they are new and unclicked.
        """
        n = self._n
        flat = ids.detach().to("cpu", torch.long).flatten()
        ranks = torch.from_numpy(self._rank[: n + 1])[flat.clamp(0, n)]
        ranks = torch.where(flat > n, torch.full_like(ranks, n - 1), ranks)
        log_p = self._log_w_head()[ranks.clamp(min=0)] - self._log_norm()
        out = torch.where(flat == 0, torch.zeros((), dtype=torch.float64), log_p)
        return out.float().reshape(ids.shape).to(ids.device)

    # --- checkpoints

    def counts(self) -> np.ndarray:
        """Count per item row 0..N (a copy; row 0 is padding and 0)."""
        return self._counts[: self._n + 1].copy()

    def state_dict(self) -> dict[str, Any]:
        """Counts and the rank order: the order holds the tie order that `set_counts` built up."""
        n = self._n
        return {"counts": torch.from_numpy(self._counts[: n + 1].copy()),
                "order": torch.from_numpy(self._order[:n].copy())}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state_dict; one saved before the order was kept (counts only) is ranked afresh."""
        if "order" not in state:
            self.update_counts(state["counts"])
            return
        counts_a = _as_counts(state["counts"])
        order = np.asarray(torch.as_tensor(state["order"], dtype=torch.long), dtype=np.int64)
        n = counts_a.size - 1
        if (order.size != n or n < 1 or int(order.min()) < 1 or int(order.max()) > n
                or not bool((np.bincount(order, minlength=n + 1)[1:] == 1).all())):
            raise ValueError("sampler state is inconsistent: its order is not a permutation of rows 1..N")
        if bool((np.diff(counts_a[order]) > 0).any()):
            raise ValueError("sampler state is inconsistent: its order is not by descending count")
        counts_a[0] = 0
        self._install(counts_a, order)

    # --- internals

    def _install(self, counts_a: np.ndarray, order: np.ndarray) -> None:
        """Take counts (rows 0..N) and a rank order sorted by descending count; rebuild the rest. O(N)."""
        n = counts_a.size - 1
        self._n = 0
        self._counts = np.zeros(0, dtype=np.int64)
        self._order = np.zeros(0, dtype=np.int64)
        self._rank = np.full(1, -1, dtype=np.int64)
        self._log_w = np.zeros(0, dtype=np.float64)
        self._reserve(n)
        self._counts[: n + 1] = counts_a
        self._order[:n] = order
        self._rank[order] = np.arange(n)
        self._n = n
        ranked = counts_a[order]
        starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
        ends = np.r_[starts[1:] - 1, n - 1]
        values = ranked[starts].tolist()
        self._first: dict[int, int] = dict(zip(values, starts.tolist()))
        self._last: dict[int, int] = dict(zip(values, ends.tolist()))

    def _reserve(self, n_items: int) -> None:
        """Room for n_items rows; capacity doubles, so growing one row at a time is O(1) amortised."""
        capacity = self._order.size
        if n_items <= capacity:
            return
        new_capacity = max(n_items, 2 * capacity)
        self._counts = _extended(self._counts, new_capacity + 1, 0)
        self._order = _extended(self._order, new_capacity, 0)
        self._rank = _extended(self._rank, new_capacity + 1, -1)
        r = torch.arange(capacity, new_capacity, dtype=torch.float64)
        # only the rank-dependent part of log P(r); log(log(N + 1)) is subtracted on use, since N moves
        tail = torch.log(torch.log(r + 2) - torch.log(r + 1)).numpy()
        self._log_w = np.concatenate([self._log_w, tail])

    def _log_w_head(self) -> Tensor:
        return torch.from_numpy(self._log_w[: self._n])

    def _log_norm(self) -> float:
        return math.log(math.log(self._n + 1))

    def _swap(self, a: int, b: int) -> None:
        """Exchange the rows at ranks a and b."""
        order, rank = self._order, self._rank
        row_a, row_b = int(order[a]), int(order[b])
        order[a], order[b] = row_b, row_a
        rank[row_a], rank[row_b] = b, a

    def _count_at(self, rank: int) -> int:
        return int(self._counts[self._order[rank]])

    def _move(self, row: int, new: int) -> None:
        old = int(self._counts[row])
        if new == old:
            return
        if new > old:
            self._rise(row, old, new)
        else:
            self._fall(row, old, new)
        self._counts[row] = new

    def _rise(self, row: int, old: int, new: int) -> None:
        first, last = self._first, self._last
        at = first[old]  # step out of the front of the old bucket
        self._swap(int(self._rank[row]), at)
        if at == last[old]:
            del first[old], last[old]
        else:
            first[old] = at + 1
        while at > 0:
            above = self._count_at(at - 1)
            if above > new:
                break
            if above == new:
                last[new] = at
                return
            top = first[above]  # pass over a bucket whose count lies between old and new
            self._swap(at, top)
            first[above], last[above] = top + 1, at
            at = top
        first[new] = last[new] = at

    def _fall(self, row: int, old: int, new: int) -> None:
        first, last = self._first, self._last
        at = last[old]  # step out of the back of the old bucket
        self._swap(int(self._rank[row]), at)
        if at == first[old]:
            del first[old], last[old]
        else:
            last[old] = at - 1
        while at < self._n - 1:
            below = self._count_at(at + 1)
            if below < new:
                break
            if below == new:
                first[new] = at
                return
            bottom = last[below]
            self._swap(at, bottom)
            first[below], last[below] = at, bottom - 1
            at = bottom
        first[new] = last[new] = at


def _as_counts(counts: Sequence[int] | Tensor | np.ndarray) -> np.ndarray:
    """Counts as a fresh int64 array; raises on negative counts."""
    if isinstance(counts, Tensor):
        out = counts.detach().to("cpu", torch.int64).flatten().numpy().copy()
    else:
        out = np.array(counts, dtype=np.int64).ravel()
    if bool((out[1:] < 0).any()):
        raise ValueError("item counts must be non-negative")
    return out


def _extended(a: np.ndarray, size: int, fill: int) -> np.ndarray:
    out = np.full(size, fill, dtype=a.dtype)
    out[: a.size] = a
    return out
