"""Vector search for serving. Milvus is the store of record; calls run off the event loop with a deadline.

Measured here (bench/serving_latency.py): one Milvus Lite search over 100 k items costs ~100 ms, far over
a 15 ms p99 budget, and an HNSW index there was slower still. So for catalogues up to
`serving.local_index_max_items` the server copies a version's vectors out of that version's Milvus
collection once, when it loads the version, and answers in memory: by default a full scan (in bfloat16
where that is faster on the CPU, then an exact float32 re-score of the shortlist), or an IVF index
(serving/ivf.py) when `serving.local_index = "ivf"`. The copy is taken from the same collection the
version announces, so it can never pair a tower with another version's vectors; larger catalogues search
Milvus per request, the path that scales out with a Milvus cluster.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import torch
from pymilvus import MilvusClient

from learner import vector_store
from serving.ivf import IVFIndex
from xdm.config import MilvusConfig, ServingConfig
from xdm.errors import ConfigError


class SearchUnavailable(RuntimeError):
    """The vector store did not answer in time or at all."""


SHORTLIST_FACTOR = 2  # a bfloat16 scan keeps this many times k candidates for the exact float32 re-score


class LocalIndex:
    """Max-inner-product top-k over one version's item vectors, in memory: a full scan, exact scores.

    scan="bfloat16" reads a bfloat16 copy instead (half the bytes; native dot products on CPUs with
    AVX512-BF16 or AMX), keeps SHORTLIST_FACTOR x k candidates and re-scores them in float32: scores stay
    exact, and an item is missed only when bf16 rounding (~0.4 % of a score) pushes it past twice k others.
    """

    def __init__(self, ids: list[str], vectors: np.ndarray, scan: str = "float32") -> None:
        self.ids = ids
        self.matrix = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
        self.scan = scan
        self._scan_matrix = self.matrix.to(torch.bfloat16) if scan == "bfloat16" and ids else None

    def __len__(self) -> int:
        return len(self.ids)

    def top_k(self, queries: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        k = min(k, len(self.ids))
        if k <= 0:
            return [[] for _ in range(len(queries))]
        q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
        if self._scan_matrix is None or SHORTLIST_FACTOR * k >= len(self.ids):
            values, rows = torch.topk(q @ self.matrix.T, k, dim=1)
        else:
            shortlist = torch.topk(q.to(torch.bfloat16) @ self._scan_matrix.T, SHORTLIST_FACTOR * k, dim=1).indices
            exact = torch.bmm(self.matrix[shortlist], q.unsqueeze(2)).squeeze(2)
            values, picked = torch.topk(exact, k, dim=1)
            rows = torch.gather(shortlist, 1, picked)
        return [[(self.ids[r], float(v)) for r, v in zip(row_ids, row_values)]
                for row_ids, row_values in zip(rows.tolist(), values.tolist())]


def faster_scan(vectors: np.ndarray, queries: int = 8, repeats: int = 5) -> str:
    """"bfloat16" if a bfloat16 scan of these vectors beats float32 on this CPU, else "float32".

    Without native bf16 dot products torch's bfloat16 matmul is several times slower, so this is probed
    where the server runs rather than assumed; min over repeats, since other jobs share the cores.
    """
    matrix = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
    q = torch.randn(queries, matrix.shape[1], generator=torch.Generator().manual_seed(0))
    timings = {name: _best_time(lambda: q.to(dtype) @ m.T, repeats)
               for name, dtype, m in (("float32", torch.float32, matrix),
                                      ("bfloat16", torch.bfloat16, matrix.to(torch.bfloat16)))}
    return min(timings, key=timings.get)


def _best_time(run, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


LOCAL_INDEX_KINDS = ("exact", "ivf")
SCANS = ("float32", "bfloat16", "auto")
AUTO_SCAN_MIN_ITEMS = 20_000  # below this a float32 scan takes well under a millisecond: nothing to win


def load_local_index(cfg: MilvusConfig, serving: ServingConfig, collection: str,
                     batch: int = 10_000) -> LocalIndex | IVFIndex:
    """Read every (id, vector) of a version's collection and index it; blocking, run it in a thread."""
    client = vector_store.connect(cfg)
    try:
        ids, vectors = vector_store.read_all(client, collection, batch)
    finally:
        client.close()
    return build_local_index(ids, vectors, serving)


def check_local_index(serving: ServingConfig) -> None:
    """Raise ConfigError for an unknown serving.local_index or local_index_scan (checked at server start)."""
    if serving.local_index not in LOCAL_INDEX_KINDS:
        raise ConfigError(f"serving.local_index is {serving.local_index!r}; use one of {', '.join(LOCAL_INDEX_KINDS)}")
    if serving.local_index_scan not in SCANS:
        raise ConfigError(f"serving.local_index_scan is {serving.local_index_scan!r}; use one of {', '.join(SCANS)}")


def build_local_index(ids: list[str], vectors: np.ndarray, serving: ServingConfig) -> LocalIndex | IVFIndex:
    """The in-memory index serving.local_index asks for; small catalogues are always scanned in full."""
    check_local_index(serving)
    if serving.local_index == "ivf" and len(ids) >= serving.ivf_min_items:
        return IVFIndex(ids, vectors, serving.ivf_nlist, serving.ivf_nprobe)
    scan = serving.local_index_scan
    if scan == "auto":
        scan = faster_scan(vectors) if len(ids) >= AUTO_SCAN_MIN_ITEMS else "float32"
    return LocalIndex(ids, vectors, scan)


class VectorSearch:
    def __init__(self, cfg: MilvusConfig, timeout_s: float) -> None:
        self.cfg = cfg
        self.timeout_s = timeout_s
        self._client: MilvusClient | None = None

    def _connect(self) -> MilvusClient:
        if self._client is None:
            self._client = vector_store.connect(self.cfg, timeout_s=self.timeout_s)
        return self._client

    async def top_k(self, collection: str, vectors: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        def run() -> list[list[tuple[str, float]]]:
            return vector_store.search(self._connect(), collection, vectors, k, self.timeout_s)

        try:
            return await asyncio.wait_for(asyncio.to_thread(run), self.timeout_s)
        except asyncio.TimeoutError:
            raise SearchUnavailable(f"vector search in {collection} took longer than {self.timeout_s} s") from None
        except Exception as exc:  # pymilvus raises many types for a server that is down
            self._client = None
            raise SearchUnavailable(f"vector search in {collection} failed: {exc}") from exc

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
