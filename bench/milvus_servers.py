"""Milvus Lite against a real Milvus standalone, as the stack starts them: which is the better default.

For each: seconds from start to ready (fresh data dir each time; the standalone's binary is unpacked once
per machine, before the first timed start), resident memory idle and with one version of N items x 64
loaded, that version's publish seconds (vector_store.write_version: insert, flush, compaction, index,
load), and one query a call searched per request (p50 / p99, k=50). Each with its stack's index: Lite
FLAT (the default config), the standalone HNSW (the cluster profile, searched with milvus.search_ef).
Both run in the one run, one after the other; other jobs share the machine (load average recorded).

    .venv/bin/python bench/milvus_servers.py [--items 100000] [--starts 3] [--queries 200]
        [--out bench/results/milvus_servers/milvus_servers.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from infra.milvus_standalone import binary_dir  # noqa: E402
from infra.processes import child_pids  # noqa: E402
from infra.services import LITE_KEEPALIVE_S, start_milvus, start_milvus_standalone  # noqa: E402
from learner import vector_store  # noqa: E402
from xdm.config import MilvusConfig  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "milvus_servers" / "milvus_servers.json"
DIM, K = 64, 50
KINDS = {  # start function, and the config its stack's clients use
    "lite": (start_milvus, {"index_type": "FLAT", "keepalive_s": LITE_KEEPALIVE_S}),
    "standalone": (start_milvus_standalone, {"index_type": "HNSW"}),
}


def main() -> None:
    args = _args()
    binary_dir()  # the one-time unpack is not a start
    root = Path(tempfile.mkdtemp(prefix="xdm-bench-milvus-"))
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((args.items, DIM)).astype(np.float32)
    queries = rng.standard_normal((args.queries, DIM)).astype(np.float32)
    results = {"items": args.items, "dim": DIM, "k": K, "cores": os.cpu_count(), "kinds": {}}
    for kind, (start, settings) in KINDS.items():
        results["kinds"][kind] = _measure(kind, start, settings, root / kind, vectors, queries, args.starts)
        print(kind, results["kinds"][kind], flush=True)
    _report(results, args.out)


def _measure(kind: str, start, settings: dict, root: Path, vectors: np.ndarray, queries: np.ndarray,
             starts: int) -> dict:
    start_s = []
    for attempt in range(starts):
        began = time.perf_counter()
        server = start(root / f"data{attempt}", root / "logs")
        start_s.append(time.perf_counter() - began)
        if attempt < starts - 1:
            server.stop()
    try:
        out = {"start_s": [round(s, 2) for s in start_s], "rss_idle_mb": _rss_mb(server.pid),
               "load_1m": os.getloadavg()[0]}
        cfg = MilvusConfig(uri=server.address, collection_prefix="bench", **settings)
        client = vector_store.connect(cfg)
        try:
            began = time.perf_counter()
            name = vector_store.write_version(client, cfg, "n", 1, [f"i{i}" for i in range(len(vectors))], vectors)
            out["publish_s"] = round(time.perf_counter() - began, 2)
            out["rss_loaded_mb"] = _rss_mb(server.pid)
            seconds = []
            for query in queries:
                began = time.perf_counter()
                vector_store.search(client, name, query[None], K, timeout_s=30, ef=cfg.search_ef)
                seconds.append(time.perf_counter() - began)
            out["search_p50_ms"] = round(float(np.percentile(seconds, 50)) * 1000, 2)
            out["search_p99_ms"] = round(float(np.percentile(seconds, 99)) * 1000, 2)
        finally:
            client.close()
    finally:
        began = time.perf_counter()
        server.stop()
        out["stop_s"] = round(time.perf_counter() - began, 2)
    out["index_type"] = settings["index_type"]
    return out


def _rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (MB)."""
    total = 0
    for p in (pid, *child_pids(pid)):
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except FileNotFoundError:
            continue
        total += int(status.split("VmRSS:")[1].split()[0])
    return round(total / 1024, 1)


def _report(results: dict, out: Path) -> None:
    lines = [f"Milvus Lite and a Milvus standalone as the stack starts them; {results['items']:,} x {DIM} "
             f"vectors, k={K}, {results['cores']} cores (command in bench/milvus_servers.py).", "",
             "| Milvus | index | start s (each) | RSS idle MB | publish s | RSS loaded MB | search p50 ms | "
             "search p99 ms | stop s | load |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for kind, r in results["kinds"].items():
        lines.append(f"| {kind} | {r['index_type']} | {', '.join(map(str, r['start_s']))} | {r['rss_idle_mb']} | "
                     f"{r['publish_s']} | {r['rss_loaded_mb']} | {r['search_p50_ms']} | {r['search_p99_ms']} | "
                     f"{r['stop_s']} | {r['load_1m']:.1f} |")
    table = "\n".join(lines) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    out.with_suffix(".md").write_text(table)
    _plot(results, out.with_suffix(".png"))
    print(table)
    print(f"wrote {out} and its .md and .png")


def _plot(results: dict, path: Path) -> None:
    """Start seconds (median), memory idle and loaded, and per-request search p50, a bar per Milvus."""
    from xdm.plotting import pyplot

    plt = pyplot()
    kinds = list(results["kinds"])
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.5))
    panels = (("start s (median)", lambda r: float(np.median(r["start_s"]))),
              ("RSS MB: idle | loaded", None),
              ("search p50 ms (1 query a call)", lambda r: r["search_p50_ms"]))
    for axis, (title, value) in zip(axes, panels):
        if value is None:
            x = np.arange(len(kinds))
            axis.bar(x - 0.2, [results["kinds"][k]["rss_idle_mb"] for k in kinds], 0.4, label="idle")
            axis.bar(x + 0.2, [results["kinds"][k]["rss_loaded_mb"] for k in kinds], 0.4, label="loaded")
            axis.set_xticks(x, kinds)
            axis.legend(fontsize=8)
        else:
            axis.bar(kinds, [value(results["kinds"][k]) for k in kinds])
        axis.set_title(title, fontsize=10)
    fig.suptitle(f"Milvus Lite vs standalone, {results['items']:,} x {DIM}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000, help="rows of the version published")
    parser.add_argument("--starts", type=int, default=3, help="timed starts of each kind")
    parser.add_argument("--queries", type=int, default=200, help="one-query searches timed")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results file")
    return parser.parse_args()


if __name__ == "__main__":
    main()
