"""Vector search for serving. Milvus is the store of record; calls run off the event loop with a deadline.

Measured here (bench/serving_latency.py): one Milvus Lite search over 100 k items costs ~100 ms, far over
a 15 ms p99 budget, and an HNSW index there was slower still. So for catalogues up to
`serving.local_index_max_items` the server copies a version's vectors out of that version's Milvus
collection once, when it loads the version, and answers in memory: by default a full scan (in bfloat16
where that is faster on the CPU, then an exact float32 re-score of the shortlist), or an IVF index
(serving/ivf.py: faiss's IndexIVFFlat, inner product). `serving.local_index = "auto"` (the default) builds the IVF index for a large catalogue
and keeps it only if it finds, on probe queries, at least `serving.ivf_min_recall` of the full scan's
top 50 (`choose_local_index`); otherwise it scans in full. The copy is taken from the same collection the
version announces, so it can never pair a tower with another version's vectors; larger catalogues search
Milvus per request, the path that scales out with a Milvus cluster.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import numpy as np
import torch
from pymilvus import MilvusClient

from learner import vector_store
from serving.ivf import IVFIndex
from xdm.config import MilvusConfig, ServingConfig
from xdm.errors import ConfigError

log = logging.getLogger(__name__)


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
        self._ids = np.array(ids, dtype=object)
        self.matrix = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
        self.scan = scan
        self.probe_recall: float | None = None  # set when "auto" compared it with an IVF index
        self._scan_matrix = self.matrix.to(torch.bfloat16) if scan == "bfloat16" and ids else None

    def __len__(self) -> int:
        return len(self.ids)

    def top_k(self, queries: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        ids, scores = self.top_k_arrays(queries, k)
        return [list(zip(i.tolist(), s.tolist())) for i, s in zip(ids, scores)]

    def top_k_arrays(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """`top_k` as arrays, item ids (object) and float32 scores [B, min(k, items)]: no Python pair per hit."""
        k = min(k, len(self.ids))
        if k <= 0:
            return np.empty((len(queries), 0), dtype=object), np.empty((len(queries), 0), dtype=np.float32)
        q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
        if self._scan_matrix is None or SHORTLIST_FACTOR * k >= len(self.ids):
            values, rows = torch.topk(q @ self.matrix.T, k, dim=1)
        else:
            shortlist = torch.topk(q.to(torch.bfloat16) @ self._scan_matrix.T, SHORTLIST_FACTOR * k, dim=1).indices
            exact = torch.bmm(self.matrix[shortlist], q.unsqueeze(2)).squeeze(2)
            values, picked = torch.topk(exact, k, dim=1)
            rows = torch.gather(shortlist, 1, picked)
        return self._ids[rows.numpy()], values.numpy()


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


LOCAL_INDEX_KINDS = ("exact", "ivf", "auto")
PROBE_QUERIES = 256  # item vectors used as queries when "auto" checks an IVF index against the full scan
PROBE_K = 50
SCANS = ("float32", "bfloat16", "auto")
AUTO_SCAN_MIN_ITEMS = 20_000  # below this a float32 scan takes well under a millisecond: nothing to win


def load_local_index(cfg: MilvusConfig, serving: ServingConfig, collection: str,
                     batch: int = 10_000) -> LocalIndex | IVFIndex:
    """Read every (id, vector) of a version's collection and index it; blocking, run it in a thread."""
    client = vector_store.connect(cfg)
    try:
        ids, vectors = vector_store.read_all(client, collection, batch, timeout_s=cfg.call_timeout_s)
    finally:
        client.close()
    return build_local_index(ids, vectors, serving)


def check_local_index(serving: ServingConfig) -> None:
    """Raise ConfigError for a bad serving.local_index, local_index_scan or ivf_min_recall (at server start)."""
    if serving.local_index not in LOCAL_INDEX_KINDS:
        raise ConfigError(f"serving.local_index is {serving.local_index!r}; use one of {', '.join(LOCAL_INDEX_KINDS)}")
    if not 0.0 <= serving.ivf_min_recall <= 1.0:
        raise ConfigError(f"serving.ivf_min_recall is {serving.ivf_min_recall}; it is a share, between 0 and 1")
    if serving.local_index_scan not in SCANS:
        raise ConfigError(f"serving.local_index_scan is {serving.local_index_scan!r}; use one of {', '.join(SCANS)}")


def build_local_index(ids: list[str], vectors: np.ndarray, serving: ServingConfig) -> LocalIndex | IVFIndex:
    """The in-memory index serving.local_index asks for; small catalogues are always scanned in full."""
    check_local_index(serving)
    if serving.local_index == "exact" or len(ids) < serving.ivf_min_items:
        return _full_scan(ids, vectors, serving)
    ivf = IVFIndex(ids, vectors, serving.ivf_nlist, serving.ivf_nprobe)
    if serving.local_index == "ivf":
        return ivf
    return choose_local_index(ivf, _full_scan(ids, vectors, serving), vectors, serving.ivf_min_recall)


def _full_scan(ids: list[str], vectors: np.ndarray, serving: ServingConfig) -> LocalIndex:
    scan = serving.local_index_scan
    if scan == "auto":
        scan = faster_scan(vectors) if len(ids) >= AUTO_SCAN_MIN_ITEMS else "float32"
    return LocalIndex(ids, vectors, scan)


def choose_local_index(ivf: IVFIndex, scan: LocalIndex, vectors: np.ndarray, min_recall: float,
                       seed: int = 0) -> LocalIndex | IVFIndex:
    """The IVF index if its recall@50 against the full scan reaches min_recall on probe queries, else the scan.

    The probe queries are item vectors of this version: a trained user vector z is pulled towards the
    output vectors of the items its user clicks (eq. 2's softmax), so queries near items are what the
    index will be asked. Vectors without cluster structure (random ones) fail the check and get scanned.
    """
    rng = np.random.default_rng(seed)
    queries = vectors[rng.choice(len(vectors), size=min(PROBE_QUERIES, len(vectors)), replace=False)]
    k = min(PROBE_K, len(vectors))
    truth = [{item for item, _ in row} for row in scan.top_k(queries, k)]
    got = [{item for item, _ in row} for row in ivf.top_k(queries, k)]
    recall = float(np.mean([len(g & t) / k for g, t in zip(got, truth)]))
    chosen: LocalIndex | IVFIndex = ivf if recall >= min_recall else scan
    chosen.probe_recall = recall
    log.info("local index for %d items: %s (IVF recall@%d %.3f on %d probe queries, threshold %.3f)",
             len(vectors), "ivf" if chosen is ivf else f"full {scan.scan} scan", k, recall, len(queries),
             min_recall)
    return chosen


VIEWS_KEPT = 8  # version layouts VectorSearch remembers (two arms, a few versions each)


class VectorSearch:
    def __init__(self, cfg: MilvusConfig, timeout_s: float) -> None:
        self.cfg = cfg
        self.timeout_s = timeout_s
        self._client: MilvusClient | None = None
        self._views: dict[str, vector_store.VersionView] = {}  # of the collections searched lately
        self._views_lock = threading.Lock()  # loads a view; searches run on several threads (batch_runners)

    def _connect(self) -> MilvusClient:
        if self._client is None:
            self._client = vector_store.connect(self.cfg, timeout_s=self.timeout_s, retry=False)  # per request
        return self._client

    async def top_k(self, collection: str, vectors: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        def run() -> list[list[tuple[str, float]]]:
            return vector_store.search(self._connect(), collection, vectors, k, self.timeout_s, self._view(collection),
                                       ef=self.cfg.search_ef, nprobe=self.cfg.search_nprobe)

        try:
            return await asyncio.wait_for(asyncio.to_thread(run), self.timeout_s)
        except asyncio.TimeoutError:
            raise SearchUnavailable(f"vector search in {collection} took longer than {self.timeout_s} s") from None
        except Exception as exc:  # pymilvus raises many types for a server that is down
            self._client = None
            raise SearchUnavailable(f"vector search in {collection} failed: {exc}") from exc

    def _view(self, collection: str) -> vector_store.VersionView:
        """A version's layout (full, or a delta on a base), read at its first search: collections are
        never rewritten, so it holds until the collection is dropped; kept for the few versions served."""
        view = self._views.get(collection)
        if view is not None:
            return view
        with self._views_lock:  # one read of a new version's view, however many batches ask at once
            view = self._views.get(collection)
            if view is None:
                view = vector_store.version_view(self._connect(), collection, self.timeout_s)
                if len(self._views) >= VIEWS_KEPT:
                    self._views.pop(next(iter(self._views)))
                self._views[collection] = view
        return view

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
