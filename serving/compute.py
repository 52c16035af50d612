"""A version's user tower as served, and what one micro-batch computes with it: the users' fused vectors z
and, when the version's item vectors are held in memory, their top k.

The same function runs on the server's compute thread (serving.compute = "thread") and in the compute
child process (serving/compute_process.py); it returns its own stage timings so the server's metrics read
the same either way.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import numpy as np

from learner.model_store import Tower, VersionInfo, load_tower
from serving.compiled_tower import compile_tower
from serving.item_encodings import ItemEncodings
from serving.search import load_local_index
from serving.user_vectors import user_vectors
from stream.windows import WindowRows
from xdm.config import Config

Hits = list[list[tuple[str, float]]]


class Computed(NamedTuple):
    hits: Hits | None  # top k per user, or None when the vectors are searched in the vector store
    z: np.ndarray | None  # the users' vectors when hits is None (the caller searches), else None
    tower_s: float
    search_s: float


def compute(tower: Tower, windows: list[WindowRows], k: int) -> Computed:
    started = time.perf_counter()
    z = user_vectors(tower, windows)
    tower_s = time.perf_counter() - started
    if tower.index is None:
        return Computed(hits=None, z=z, tower_s=tower_s, search_s=0.0)
    started = time.perf_counter()
    hits = tower.index.top_k(z, k)
    return Computed(hits=hits, z=None, tower_s=tower_s, search_s=time.perf_counter() - started)


def build_tower(cfg: Config, info: VersionInfo) -> Tower:
    """A version's user tower as served: traced when serving.trace_tower, with its item vectors in memory
    up to serving.local_index_max_items. Blocking (seconds at 100 k items: the IVF index's k-means). The
    tower file is the one the store keeps for (arm, version), whatever info.tower_uri says."""
    tower = load_tower(cfg.learner.model_store, info.arm, info.version)
    tower.encodings = ItemEncodings(tower.model, tower.vocab, cfg.serving.item_encodings_max)
    if cfg.serving.trace_tower:
        tower.encode = compile_tower(tower.model)
    if info.items <= cfg.serving.local_index_max_items:
        tower.index = load_local_index(cfg.milvus, cfg.serving, info.collection)
        if len(tower.index) != info.items:
            raise RuntimeError(f"collection {info.collection} holds {len(tower.index)} items, version says {info.items}")
    return tower
