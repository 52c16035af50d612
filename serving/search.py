"""Vector search for serving. Milvus is the store of record; calls run off the event loop with a deadline.

Measured here (bench/serving_latency.py): one Milvus Lite search over 100 k items costs ~100 ms, far over
a 15 ms p99 budget, and an HNSW index there was slower still. So for catalogues up to
`serving.local_index_max_items` the server copies a version's vectors out of that version's Milvus
collection once, when it loads the version, and answers with an exact inner-product top-k in memory
(about a millisecond at 100 k x 64). The copy is taken from the same collection the version announces, so
it can never pair a tower with another version's vectors; larger catalogues search Milvus per request,
the path that scales out with a Milvus cluster.
"""

from __future__ import annotations

import asyncio

import numpy as np
import torch
from pymilvus import MilvusClient

from learner import vector_store
from xdm.config import MilvusConfig


class SearchUnavailable(RuntimeError):
    """The vector store did not answer in time or at all."""


class LocalIndex:
    """Exact max-inner-product top-k over one version's item vectors, in memory."""

    def __init__(self, ids: list[str], vectors: np.ndarray) -> None:
        self.ids = ids
        self.matrix = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))

    def __len__(self) -> int:
        return len(self.ids)

    def top_k(self, queries: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        scores = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)) @ self.matrix.T
        values, rows = torch.topk(scores, min(k, len(self.ids)), dim=1)
        return [[(self.ids[r], float(v)) for r, v in zip(row_ids, row_values)]
                for row_ids, row_values in zip(rows.tolist(), values.tolist())]


def load_local_index(cfg: MilvusConfig, collection: str, batch: int = 10_000) -> LocalIndex:
    """Read every (id, vector) of a version's collection; blocking, run it in a thread."""
    client = vector_store.connect(cfg)
    try:
        ids, vectors = vector_store.read_all(client, collection, batch)
    finally:
        client.close()
    return LocalIndex(ids, vectors)


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
