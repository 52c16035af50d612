"""In-memory index comparison: recall@50 against the exact scan and milliseconds per batch, in one run.

Compares, on the same clustered vectors (items around topic centres, as trained item embeddings are):
the exact float32 scan (serving.search.LocalIndex), the served IVF index (serving.ivf.IVFIndex, faiss's
IndexIVFFlat with the inner-product metric), and faiss's IndexHNSWFlat with the inner-product metric.
The committed local_index.json also has a `numpy_ivf` row: the hand-written numpy IVF that serving/ivf.py
was before it became faiss (measured at commit 5ceeb8d, where this script built both). Every index runs on one thread,
as the server's compute child does. Writes bench/results/local_index/local_index.json.

    .venv/bin/python bench/local_index.py [--sizes 100000,1000000] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

K = 50
BATCH = 8  # queries a micro-batch holds at concurrency 8 (about 3.5 on average, 8 at most)
QUERIES = 256
HNSW_M = 32
HNSW_EF_SEARCH = 128


def clustered(n: int, dim: int = 64, topics: int = 500, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The vectors bench/serving_latency.py's in-process comparison uses: items and queries near topics."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(topics, dim)) * 0.3
    vectors = (centres[rng.integers(0, topics, n)] + 0.15 * rng.normal(size=(n, dim))).astype(np.float32)
    queries = (centres[rng.integers(0, topics, QUERIES)] + 0.15 * rng.normal(size=(QUERIES, dim))).astype(np.float32)
    return vectors, queries


class FaissRows:
    """A raw faiss index behind the serving indexes' top_k(queries, k) -> [[(id, score)]] shape."""

    def __init__(self, index, ids: list[str]) -> None:
        self.index = index
        self.ids = np.array(ids, dtype=object)

    def top_k(self, queries: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        scores, rows = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return [list(zip(self.ids[r[r >= 0]].tolist(), s[r >= 0].tolist())) for s, r in zip(scores, rows)]


def build_indexes(ids: list[str], vectors: np.ndarray, nlist: int, nprobe: int) -> dict[str, tuple[object, float]]:
    import faiss

    from serving.ivf import IVFIndex
    from serving.search import LocalIndex

    built: dict[str, tuple[object, float]] = {}

    def timed(name: str, make) -> None:
        started = time.perf_counter()
        built[name] = (make(), time.perf_counter() - started)

    timed("exact_float32", lambda: LocalIndex(ids, vectors))
    timed("faiss_ivf_flat", lambda: IVFIndex(ids, vectors, nlist, nprobe))  # what the server builds

    def faiss_hnsw():
        index = faiss.IndexHNSWFlat(vectors.shape[1], HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.add(vectors)
        index.hnsw.efSearch = HNSW_EF_SEARCH
        return FaissRows(index, ids)

    timed("faiss_hnsw_flat", faiss_hnsw)
    return built


def median_ms(run, repeats: int = 30) -> float:
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        timings.append(time.perf_counter() - started)
    return round(float(np.median(timings)) * 1000, 3)


def measure(n: int, nlist: int, nprobe: int) -> dict:
    vectors, queries = clustered(n)
    ids = [f"i{r}" for r in range(n)]
    built = build_indexes(ids, vectors, nlist, nprobe)
    truth = [{i for i, _ in row} for row in built["exact_float32"][0].top_k(queries, K)]
    rows = {}
    for name, (index, build_s) in built.items():
        got = index.top_k(queries, K)
        recall = float(np.mean([len({i for i, _ in g} & t) / K for g, t in zip(got, truth)]))
        batches = [queries[s:s + BATCH] for s in range(0, QUERIES, BATCH)]
        rows[name] = {"recall_at_50": round(recall, 4), "build_s": round(build_s, 2),
                      f"ms_per_{BATCH}_queries": median_ms(lambda: index.top_k(batches[0], K)),
                      "ms_per_1_query": median_ms(lambda: index.top_k(queries[:1], K))}
    return {"items": n, "dim": vectors.shape[1], "topics": 500, "nlist": nlist, "nprobe": nprobe,
            "hnsw_m": HNSW_M, "hnsw_ef_search": HNSW_EF_SEARCH, "indexes": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--out", default="bench/results/local_index/local_index.json")
    args = parser.parse_args()
    import faiss
    import torch

    from xdm.config import ServingConfig

    torch.set_num_threads(1)  # as the server's compute child does
    faiss.omp_set_num_threads(1)
    sc = ServingConfig()
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_1min": os.getloadavg()[0],
              "faiss": faiss.__version__, "numpy": np.__version__, "runs": []}
    for n in (int(s) for s in args.sizes.split(",")):
        run = measure(n, sc.ivf_nlist, sc.ivf_nprobe)
        report["runs"].append(run)
        print(json.dumps(run), flush=True)
    report["load_1min_end"] = os.getloadavg()[0]
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
