"""Vector search for serving: Milvus is the store of record; calls run off the event loop with a deadline."""

from __future__ import annotations

import asyncio

import numpy as np
from pymilvus import MilvusClient

from learner import vector_store
from xdm.config import MilvusConfig


class SearchUnavailable(RuntimeError):
    """The vector store did not answer in time or at all."""


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
