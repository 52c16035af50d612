"""An inverted-file (IVF) index over one version's item vectors, built in torch when the version loads.

Why: exact top-k over 100 k x 64 float32 vectors reads the whole matrix for every batch (~6 ms for a
batch of 8 on one core here), most of a 15 ms p99 budget. k-means splits the items into `nlist` lists;
a query scans only the `nprobe` lists whose centroids score highest and re-scores those candidates
exactly, so every returned score is a true inner product and only membership is approximate. Like
Faiss's IndexIVFFlat with the inner-product metric, the lists come from plain (L2) k-means and are probed
by centroid inner product.

It pays only on vectors with cluster structure (items of one category near each other, as trained item
embeddings are): 100 k clustered vectors, nlist 1024, nprobe 16 gave recall@50 1.0 at ~1.3 ms for 8
queries against ~6 ms for the full scan; the bench's isotropic random vectors need half the lists for
recall 0.95, which is slower than the full scan. So it is opt-in, and bench/serving_latency.py prints its
recall@50 against the float32 full scan on the bench's vectors. Building it (k-means) takes seconds of one
core per version at 100 k items, off the event loop.
"""

from __future__ import annotations

import math

import numpy as np
import torch

POINTS_PER_CENTROID = 39  # below this k-means centroids are noise (Faiss warns at the same bound)
TRAIN_POINTS_PER_CENTROID = 64  # k-means trains on a sample: build time stays bounded as catalogues grow
KMEANS_ITERATIONS = 10


def kmeans(vectors: torch.Tensor, n_centroids: int, iterations: int = KMEANS_ITERATIONS,
           seed: int = 0) -> torch.Tensor:
    """Lloyd's k-means, [n_centroids, D]; an emptied centroid is re-seeded on a random point."""
    generator = torch.Generator().manual_seed(seed)
    centroids = vectors[torch.randperm(len(vectors), generator=generator)[:n_centroids]].clone()
    for _ in range(iterations):
        assignment = nearest_centroid(vectors, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, assignment, vectors)
        counts = torch.bincount(assignment, minlength=n_centroids)
        empty = counts == 0
        centroids = sums / counts.clamp(min=1).unsqueeze(1).to(vectors.dtype)
        if empty.any():
            centroids[empty] = vectors[torch.randint(len(vectors), (int(empty.sum()),), generator=generator)]
    return centroids


def nearest_centroid(vectors: torch.Tensor, centroids: torch.Tensor, chunk: int = 65_536) -> torch.Tensor:
    """Index of the L2-nearest centroid of each vector; chunked so the score matrix stays small."""
    half_norms = 0.5 * (centroids * centroids).sum(1)
    return torch.cat([(part @ centroids.T - half_norms).argmax(1) for part in vectors.split(chunk)])


class IVFIndex:
    """Approximate max-inner-product top-k: scan the `nprobe` best lists, re-score candidates exactly."""

    def __init__(self, ids: list[str], vectors: np.ndarray, nlist: int, nprobe: int, seed: int = 0) -> None:
        matrix = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)) if ids else torch.zeros(0, 1)
        self.ids = ids
        self.probe_recall: float | None = None  # recall@50 against the full scan, when serving.local_index="auto"
        self.nlist = max(1, min(nlist, len(ids) // POINTS_PER_CENTROID))
        # A catalogue too small for nlist lists keeps the scanned share, and so about the recall.
        self.nprobe = max(1, min(self.nlist, math.ceil(nprobe * self.nlist / max(nlist, 1))))
        if ids:
            self.centroids = kmeans(_training_sample(matrix, self.nlist, seed), self.nlist, seed=seed)
            lists = nearest_centroid(matrix, self.centroids)
        else:  # nothing to search; top_k answers empty before it reads the centroids
            self.centroids = torch.zeros(1, 1)
            lists = torch.zeros(0, dtype=torch.long)
        order = torch.argsort(lists, stable=True)  # storage row -> row of `ids`
        counts = torch.bincount(lists, minlength=self.nlist)
        self.offsets = offsets = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)]).tolist()
        # Searched in numpy: a query is a dozen small operations, each ~1 µs in numpy against ~5-10 µs
        # through torch's dispatcher (0.33 vs 0.62 ms for 4 queries at 100 k items, same answers).
        self._centroids_t = self.centroids.numpy().T.copy()
        self._storage = matrix[order].numpy().copy()  # each list's vectors side by side
        self._storage_ids = np.array(ids, dtype=object)[order.numpy()] if ids else np.array([], dtype=object)
        self._lists = [np.arange(offsets[i], offsets[i + 1]) for i in range(self.nlist)]  # storage rows per list
        self._everything = np.arange(len(ids))

    def __len__(self) -> int:
        return len(self.ids)

    def top_k(self, queries: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        k = min(k, len(self.ids))
        if k <= 0:
            return [[] for _ in range(len(q))]
        probes = np.argpartition(-(q @ self._centroids_t), self.nprobe - 1, axis=1)[:, :self.nprobe]
        return [self._answer(query, lists, k) for query, lists in zip(q, probes)]

    def _answer(self, query: np.ndarray, lists: np.ndarray, k: int) -> list[tuple[str, float]]:
        rows = np.concatenate([self._lists[i] for i in lists])
        if len(rows) < k:  # the probed lists hold fewer than k items: this query is answered exactly
            rows = self._everything
        scores = self._storage[rows] @ query
        best = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
        best = best[np.argsort(-scores[best], kind="stable")]
        return list(zip(self._storage_ids[rows[best]].tolist(), scores[best].tolist()))


def _training_sample(matrix: torch.Tensor, nlist: int, seed: int) -> torch.Tensor:
    size = min(len(matrix), nlist * TRAIN_POINTS_PER_CENTROID)
    if size == len(matrix):
        return matrix
    return matrix[torch.randperm(len(matrix), generator=torch.Generator().manual_seed(seed))[:size]]
