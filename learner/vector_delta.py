"""A version's item vectors as its base version plus the rows that changed since: diff, merge, search merge.

A full publish writes every item's vector (~40-60 µs an item into Milvus Lite, 30 M items in about half
an hour: bench/publish_cost.py). Between two publishes AdaGrad only moves the rows a step touched (the
batch's items, their windows and the sampled negatives; an untouched row's gradient is exactly 0), so a
version is published as a delta on the newest full version (its base): the items whose vector differs in
any element from the base's, new items, and tombstones for items the base has and the version no longer
has (evicted). A delta is always taken against the base, never against the previous delta, so a reader
merges two layers at most, whatever the length of the chain. Pure numpy: no Milvus here
(learner/vector_store.py does the I/O).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

COMPARE_ROWS = 65_536  # rows compared at a time

@dataclass(frozen=True)
class Delta:
    """What a version changes against its base."""

    ids: list[str]  # items whose vector differs from the base's, or that the base lacks
    vectors: np.ndarray  # one row per id
    removed: list[str]  # items of the base that the version does not have

    @property
    def rows(self) -> int:
        return len(self.ids) + len(self.removed)


@dataclass
class Base:
    """A full version's ids and vectors, kept to take deltas against (one copy of the item table)."""

    ids: list[str]
    vectors: np.ndarray
    _positions: dict[str, int] | None = field(default=None, repr=False)

    def positions(self) -> dict[str, int]:
        """Row of each id; built on first need, only when a version's ids are not the base's plus new ones."""
        if self._positions is None:
            self._positions = {item: row for row, item in enumerate(self.ids)}
        return self._positions


def diff(base: Base, ids: Sequence[str], vectors: np.ndarray) -> Delta:
    """The delta that turns `base` into the version (ids, vectors). Exact: a row is changed when any
    element differs (NaN counts as changed), so a merged read returns the version's vectors bit for bit."""
    if len(ids) != len(vectors):
        raise ValueError(f"{len(ids)} ids but {len(vectors)} vectors")
    n = len(base.ids)
    if len(ids) >= n and list(ids[:n]) == base.ids:  # the usual case: items only ever added, in row order
        positions = None
        removed: list[str] = []
    else:
        lookup = base.positions()
        positions = np.fromiter((lookup.get(item, -1) for item in ids), dtype=np.int64, count=len(ids))
        kept = np.zeros(n, dtype=bool)
        kept[positions[positions >= 0]] = True
        removed = [base.ids[row] for row in np.flatnonzero(~kept)]
    changed = np.ones(len(ids), dtype=bool)
    for start in range(0, len(ids), COMPARE_ROWS):  # in blocks: no catalogue-sized temporaries
        stop = min(start + COMPARE_ROWS, len(ids))
        if positions is None:
            known = min(stop, n) - start
            if known > 0:
                changed[start:start + known] = np.any(vectors[start:start + known] != base.vectors[start:start + known],
                                                      axis=1)
            continue
        rows = positions[start:stop]
        known = rows >= 0
        changed[start:stop][known] = np.any(vectors[start:stop][known] != base.vectors[rows[known]], axis=1)
    rows = np.flatnonzero(changed)
    return Delta(ids=[ids[r] for r in rows], vectors=vectors[rows], removed=removed)


def merge(base_ids: Sequence[str], base_vectors: np.ndarray, delta_ids: Sequence[str], delta_vectors: np.ndarray,
          removed: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """The version's (ids, vectors): base rows the delta names are replaced (or dropped when removed),
    the delta's other rows appended."""
    replaced = {item: row for row, item in enumerate(delta_ids)}
    gone = set(removed)
    keep = np.fromiter((item not in replaced and item not in gone for item in base_ids), dtype=bool,
                       count=len(base_ids))
    ids = [item for item, k in zip(base_ids, keep) if k] + list(delta_ids)
    vectors = np.concatenate([base_vectors[keep], delta_vectors]) if len(delta_ids) else base_vectors[keep]
    return ids, np.ascontiguousarray(vectors, dtype=np.float32)


def merge_hits(delta_hits: list[tuple[str, float]], base_hits: list[tuple[str, float]],
               overridden: frozenset[str] | set[str], k: int) -> list[tuple[str, float]]:
    """Top k of one query over a delta version: the delta's hits and the base's hits the delta does not
    override (changed or removed), best score first."""
    hits = delta_hits + [hit for hit in base_hits if hit[0] not in overridden]
    return sorted(hits, key=lambda hit: -hit[1])[:k]
