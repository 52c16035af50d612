"""A version's user tower as served, and what one micro-batch computes with it: the users' fused vectors z
and, when the version's item vectors are held in memory, their top k.

The same function runs on the server's compute thread (serving.compute = "thread") and in the compute
child process (serving/compute_process.py); it returns its own stage timings so the server's metrics read
the same either way.

The top k come back packed (PackedHits: the ids joined in one string, the scores as float32 bytes) rather
than as a list of (id, score) pairs per user, so the compute process neither builds nor pickles a Python
pair per hit (with the pairs: ~10 % of its interpreter-lock time at 100 k items, concurrency 8). The
server still makes the pairs its replies are built from: measured there, unpickling pairs took 7.5 % of
the event loop's interpreter-lock time, unpickling and unpacking a packed batch 2.8 % + 4.2 %.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import numpy as np

from learner.model_store import Tower, VersionInfo, load_tower
from serving.compiled_tower import compile_tower
from serving.item_encodings import ItemEncodings
from serving.search import load_local_index
from serving.user_vectors import WindowKeys, user_vectors_of_keys
from stream.windows import FIELD_SEP
from xdm.config import Config

Hits = list[list[tuple[str, float]]]


class PackedHits(NamedTuple):
    """The top k of every user of a batch in two flat objects. FIELD_SEP can join item ids: no id holds it
    (stream.windows.item_key refuses one that does)."""

    ids: str  # users x width item ids, row after row, joined by FIELD_SEP
    scores: bytes  # the same number of float32 scores
    users: int
    width: int  # hits per user: min(k, items)

    @classmethod
    def of(cls, ids: np.ndarray, scores: np.ndarray) -> PackedHits:
        """From the index's [B, width] arrays of item ids and scores."""
        joined = FIELD_SEP.join(ids.ravel().tolist())
        if ids.size and joined.count(FIELD_SEP) != ids.size - 1:  # loud, where a split would shift every hit
            raise ValueError(f"an item id of this version holds {FIELD_SEP!r}, which item ids must not hold "
                             "(stream.windows.item_key); republish without it")
        return cls(joined, np.ascontiguousarray(scores, dtype=np.float32).tobytes(), ids.shape[0], ids.shape[1])

    def unpack(self) -> Hits:
        if self.width == 0:
            return [[] for _ in range(self.users)]
        ids = self.ids.split(FIELD_SEP)
        scores = np.frombuffer(self.scores, dtype=np.float32).tolist()
        w = self.width
        return [list(zip(ids[start:start + w], scores[start:start + w])) for start in range(0, len(ids), w)]


class Computed(NamedTuple):
    hits: PackedHits | None  # top k per user, or None when the vectors are searched in the vector store
    z: np.ndarray | None  # the users' vectors when hits is None (the caller searches), else None
    tower_s: float
    search_s: float


def compute(tower: Tower, keys: WindowKeys, k: int) -> Computed:
    started = time.perf_counter()
    z = user_vectors_of_keys(tower, keys)
    tower_s = time.perf_counter() - started
    if tower.index is None:
        return Computed(hits=None, z=z, tower_s=tower_s, search_s=0.0)
    started = time.perf_counter()
    hits = PackedHits.of(*tower.index.top_k_arrays(z, k))
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
