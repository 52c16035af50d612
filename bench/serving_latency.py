"""Recall latency under closed-loop load on loopback, against a bare gRPC echo server in the same run.

Starts the embedded broker and Milvus Lite, publishes one model version per catalogue size (10 k and 100 k
items) with the learner's own Publisher (its time is the "publish" figure), writes users' windows to the
windows changelog (what workers would have written), starts `xdm serve` processes and an echo server,
then drives each with C concurrent callers (C = 1, 8, 32), bounded in requests and seconds.

Server variants: `exact` (in-memory copy of the version's Milvus collection, float32 full scan: the
reference), `local` (the server's defaults: local_index=auto), `ivf` (serving.local_index=ivf: k-means
lists, approximate, kept whatever its recall), `scan` (serving.local_index=exact with the default scan precision),
`thread` (towers and search on a thread of the server instead of its compute process), `runners2` (two
batches in flight, on threads), `switch1` (a 1 ms GIL switch interval instead of Python's 5 ms), `nofreeze` (start-up heap left to the garbage collector), `eager` (user tower not traced), `nobatch` (no micro-batching) and `milvus` (search Milvus per
request, serving.local_index_max_items=0). Every variant's recall@50 against `exact`'s answers for the
same users is printed. Each row also gives the server's own view, from its metrics: mean batch size and
mean time per batch queued, in the user tower and in the search, and the full garbage collections (count,
mean pause); from /proc: server CPU per answer and the event loop's share of it; and the machine's 1-minute load average (other jobs share these machines).
The published item vectors cluster by leaf category (a centre per leaf, items around it), as trained
output embeddings do; isotropic random vectors, the worst case for IVF, are what `serving.local_index=auto`
refuses (tests/unit/test_local_index.py). Last, in process, the full scans and the IVF index on clustered
vectors of the largest size. Writes
bench/results/serving_latency/serving_latency.json (a markdown table and a plot beside it) and prints a
table with the ratio to echo.

`--milvus standalone` starts a real Milvus standalone instead of Milvus Lite and publishes with an HNSW
index (milvus.index_type=HNSW, searched with milvus.search_ef; `--index IVF_FLAT`: nlist 1024, searched
with milvus.search_nprobe): the cluster path, where the `milvus` server's search runs in Milvus. Each row then also gives Milvus's own CPU per answer (the process's
CPU over the row / answers), so the cost of an answer is the server's plus Milvus's. The figure of #26:

    .venv/bin/python bench/serving_latency.py --milvus standalone --servers exact,local,milvus \
        --sizes 100000,1000000 --concurrency 8 --out bench/results/serving_milvus/serving_milvus.json
    .venv/bin/python bench/serving_latency.py --milvus standalone --index IVF_FLAT --servers exact,local,milvus \
        --sizes 100000,1000000 --concurrency 8 --seconds 15 --out bench/results/serving_milvus/serving_milvus_ivf.json

    .venv/bin/python bench/serving_latency.py [--requests 2000] [--seconds 20] [--quick]
        [--servers exact,local,ivf,thread,runners2,switch1,nofreeze,eager,nobatch,milvus] [--sizes 10000,100000] [--concurrency 1,8,32]
        [--repeats 1] [--milvus lite|standalone] [--out bench/results/serving_latency/serving_latency.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from infra.processes import child_pids, free_port, port_open, start_process, wait_until  # noqa: E402
from infra.stack import config_env, start_services  # noqa: E402
from xdm.client_security import kafka_client_kwargs  # noqa: E402
from xdm.config import INDEX_TYPES, apply_overrides, load_config  # noqa: E402
from xdm.model_config import model_overrides  # noqa: E402
from xdm.progress import progress_bar  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "serving_latency" / "serving_latency.json"
USERS = 2000
LEAVES = 500  # leaf categories of the bench catalogue; item vectors cluster around one centre per leaf
RECALL_USERS = 200  # users whose top-50 an approximate server is compared on
SERVERS = {  # "exact" first: it is the reference the others' recall@50 is measured against
    "exact": {"serving.local_index": "exact", "serving.local_index_scan": "float32"},
    "local": {},
    "ivf": {"serving.local_index": "ivf"},
    "scan": {"serving.local_index": "exact"},
    "thread": {"serving.compute": "thread"},
    "runners2": {"serving.batch_runners": 2, "serving.compute": "thread"},
    "switch1": {"serving.switch_interval_ms": 1.0},
    "nofreeze": {"serving.gc_freeze": False},
    "eager": {"serving.trace_tower": False},
    "nobatch": {"serving.batch_max": 1, "serving.batch_runners": 1},
    "milvus": {"serving.local_index_max_items": 0},
}
FULL_SWEEP = ("exact", "local", "ivf")  # the others run concurrency 8 only, except at the largest catalogue
MILVUS_INDEX = {"lite": {}, "standalone": {"milvus.index_type": "HNSW"}}  # per --milvus: how versions are indexed


def main() -> None:
    args = _args()
    if args.echo_port:
        asyncio.run(_echo_server(args.echo_port))
        return
    sizes = (10_000,) if args.quick else args.sizes
    root = Path(tempfile.mkdtemp(prefix="xdm-bench-serving-"))
    index = {"milvus.index_type": args.index} if args.index else MILVUS_INDEX[args.milvus]
    cfg = load_config("local", env={}, overrides={"model.embed_dim": 64, **index})
    stack = start_services(root / "stack", cfg, "local", arms=",".join(f"n{n}:1" for n in sizes), milvus=args.milvus)
    milvus_pid = stack.by_name("milvus").pid
    results: dict = {"machine": platform.machine(), "cores": _cores(), "users": USERS, "out": str(args.out.resolve().relative_to(ROOT) if args.out.resolve().is_relative_to(ROOT) else args.out),
                     "repeats": args.repeats, "rows": [], "publish_s": {}, "milvus": args.milvus,
                     "index_type": stack.cfg.milvus.index_type, "search_ef": stack.cfg.milvus.search_ef,
                     "search_nprobe": stack.cfg.milvus.search_nprobe,
                     "recall_at_50": {}}
    answers: dict[tuple[str, int], list[list[str]]] = {}
    bar = progress_bar(total=_planned_rows(args, sizes), desc="serving bench", unit="row")
    try:
        for n in sizes:
            bar.set_postfix_str(f"publishing {n} items")
            results["publish_s"][str(n)] = _publish(stack.cfg, n)
        _write_windows(stack.cfg, max(sizes))
        echo_port = free_port()
        echo = start_process("echo", [sys.executable, __file__, "--echo-port", str(echo_port)], root / "logs",
                             ports=(echo_port,))
        stack.processes.append(echo)
        wait_until(lambda: port_open("127.0.0.1", echo_port), 30, "echo server")
        for c in args.concurrency:
            results["rows"].append(_row("echo", "-", c, _repeated_load(f"127.0.0.1:{echo_port}", "", c, args)))
            _progress(bar, results["rows"][-1])
        for name in args.servers:
            bar.set_postfix_str(f"starting {name}")
            port, metrics_port = free_port(), free_port()
            scfg = apply_overrides(stack.cfg, {"serving.port": port, "serving.metrics_port": metrics_port,
                                               **SERVERS[name]})
            proc = start_process(f"server-{name}", [sys.executable, "-m", "xdm", "serve"], root / "logs",
                                 ports=(port,), env=config_env(scfg))
            stack.processes.append(proc)
            _wait_model(f"127.0.0.1:{port}", sizes)
            for n in sizes:
                answers[(name, n)] = _answers(f"127.0.0.1:{port}", f"n{n}")
                if name != "exact" and ("exact", n) in answers:
                    results["recall_at_50"][f"{name} {n}"] = _recall(answers[(name, n)], answers[("exact", n)])
                for c in args.concurrency:
                    if name not in FULL_SWEEP and c != 8 and n != max(sizes):
                        continue
                    before, cpu_before = _server_metrics(metrics_port), _cpu_seconds(proc.pid)
                    milvus_before = _cpu_seconds(milvus_pid)["process"]
                    stats = _repeated_load(f"127.0.0.1:{port}", f"n{n}", c, args)
                    stats.update(_batch_stats(before, _server_metrics(metrics_port)))
                    stats.update(_cpu_per_request(cpu_before, _cpu_seconds(proc.pid), stats["requests"]))
                    stats["milvus_cpu_ms"] = ((_cpu_seconds(milvus_pid)["process"] - milvus_before) * 1000
                                              / max(stats["requests"], 1))
                    results["rows"].append(_row(name, n, c, stats))
                    _progress(bar, results["rows"][-1])
            proc.stop()
            stack.processes.remove(proc)
    finally:
        bar.close()
        stack.stop()
    results["in_process"] = _indexes_on_clustered_vectors(max(sizes))
    _report(results)


def _publish(cfg, n: int) -> float:
    """Publish a version with n items through the learner's own code; returns its duration (s)."""
    import torch

    from learner.model import config_for
    from learner.publish import Publisher
    from learner.trainer import Trainer
    from xdm.records import Item

    trainer = Trainer(config_for("xdm", **model_overrides(cfg.model)), device="cpu")
    for i in range(n):
        trainer.vocab.add_item(_item(i))
    trainer.model.grow_to(trainer.vocab.sizes())
    with torch.no_grad():  # trained item vectors cluster by category: one centre per leaf, items around it
        weight = trainer.model.item_out.weight
        rng = np.random.default_rng(n)
        centres = rng.normal(0, 0.3, size=(LEAVES, weight.shape[1]))
        rows = [trainer.vocab.lookup("item", f"i{i}") for i in range(n)]
        vectors = centres[np.arange(n) % LEAVES] + rng.normal(0, 0.15, size=(n, weight.shape[1]))
        weight[torch.tensor(rows)] = torch.from_numpy(vectors.astype(np.float32))
    publisher = Publisher(cfg, f"n{n}", "xdm")
    started = time.perf_counter()
    publisher.publish(trainer, 1)
    publisher.close()
    return round(time.perf_counter() - started, 2)


def _item(i: int):
    from xdm.records import Item

    return Item(f"i{i}", f"leaf{i % LEAVES}", f"top{i % 20}", f"brand{i % 2000}", f"shop{i % 3000}")


def _write_windows(cfg, n_items: int) -> None:
    """Users with Table-1 sized windows (13 session, 21 long-term, 71 unclicked), as workers would write."""
    from kafka import KafkaProducer

    from stream.samples import step
    from stream.state_codec import encode_state
    from stream.topics import changelog_topic
    from stream.windows import UserState
    from xdm.records import Event

    rng = np.random.default_rng(0)
    producer = KafkaProducer(**kafka_client_kwargs(cfg.kafka, "kafka-python"), acks="all", linger_ms=5)
    t0 = 1_700_000_000_000
    for u in range(USERS):
        state, user = UserState(), f"u{u}"
        items = rng.integers(0, min(n_items, 10_000), size=200)
        events = [Event(f"{user}-l{k}", t0 + k * 3_600_000, user, f"i{items[k]}", "click") for k in range(21)]
        start = t0 + 30 * 3_600_000
        events += [Event(f"{user}-s{k}", start + k * 60_000, user, f"i{items[21 + k]}", "click") for k in range(13)]
        events += [Event(f"{user}-u{k}-{r}", start + k * 1000 + r, user, f"i{items[40 + k]}", "impression")
                   for k in range(71) for r in range(2)]
        for e in sorted(events, key=lambda e: e.ts_ms):
            step(state, e, _item(int(e.item_id[1:])), cfg.windows, cfg.samples)
        producer.send(changelog_topic(cfg), key=user.encode(), value=encode_state(state),
                      partition=u % cfg.kafka.partitions)
    producer.flush()
    producer.close()


def _wait_model(address: str, sizes) -> None:
    import grpc

    from xdm.v1 import recall_pb2, recall_pb2_grpc

    def ready() -> bool:
        with grpc.insecure_channel(address) as channel:
            stub = recall_pb2_grpc.RecallStub(channel)
            return all(not stub.Recall(recall_pb2.RecallRequest(user_id="u1", k=10, arm=f"n{n}"), timeout=10).fallback
                       for n in sizes)

    wait_until(ready, 300, f"server {address} answering from its models", interval_s=1.0)


async def _load(address: str, arm: str, concurrency: int, args, channel_options: tuple = ()) -> dict:
    """Closed-loop load; channel_options e.g. a round-robin policy over several servers (bench/scale_out.py)."""
    import grpc

    from xdm.v1 import recall_pb2, recall_pb2_grpc

    latencies: list[float] = []
    errors = 0
    total = args.requests if concurrency > 1 else max(200, args.requests // 4)
    deadline = time.perf_counter() + args.seconds
    async with grpc.aio.insecure_channel(address, options=list(channel_options)) as channel:
        stub = recall_pb2_grpc.RecallStub(channel)
        issued = 0

        async def caller(worker: int) -> None:
            nonlocal issued, errors
            while issued < total and time.perf_counter() < deadline:
                issued += 1
                request = recall_pb2.RecallRequest(user_id=f"u{(worker * 7919 + issued) % USERS}", k=50, arm=arm)
                started = time.perf_counter()
                try:
                    await stub.Recall(request, timeout=10)
                except grpc.aio.AioRpcError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - started)

        for _ in range(20):  # warm-up
            await stub.Recall(recall_pb2.RecallRequest(user_id="u1", k=50, arm=arm), timeout=10)
        began = time.perf_counter()
        await asyncio.gather(*(caller(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - began
    lat = np.array(latencies) * 1000
    return {"requests": len(latencies), "errors": errors, "qps": len(latencies) / elapsed,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99))}


def _repeated_load(address: str, arm: str, concurrency: int, args) -> dict:
    """`--repeats` loads in a row: the median of p50, p99 and QPS, with the range of p99 (one row of one
    configuration moved p99 by ~3 ms from row to row on the shared 2-core machine)."""
    runs = [asyncio.run(_load(address, arm, concurrency, args)) for _ in range(args.repeats)]
    if len(runs) == 1:
        return runs[0]
    out = {key: float(np.median([r[key] for r in runs])) for key in ("p50_ms", "p99_ms", "qps")}
    return {**out, "requests": sum(r["requests"] for r in runs), "errors": sum(r["errors"] for r in runs),
            "repeats": len(runs), "p99_min_ms": min(r["p99_ms"] for r in runs),
            "p99_max_ms": max(r["p99_ms"] for r in runs)}


def _indexes_on_clustered_vectors(n: int, dim: int = 64, topics: int = 500, seed: int = 0) -> dict:
    """The in-memory indexes on vectors with cluster structure (as trained item embeddings have, unlike
    the random vectors the servers above search): recall@50 against the float32 scan, ms per 8 queries."""
    import torch

    from serving.ivf import IVFIndex
    from serving.search import LocalIndex
    from xdm.config import ServingConfig

    torch.set_num_threads(1)  # as the server does
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(topics, dim)) * 0.3
    vectors = (centres[rng.integers(0, topics, n)] + 0.15 * rng.normal(size=(n, dim))).astype(np.float32)
    queries = (centres[rng.integers(0, topics, 64)] + 0.15 * rng.normal(size=(64, dim))).astype(np.float32)
    ids = [f"i{r}" for r in range(n)]
    sc = ServingConfig()
    exact = LocalIndex(ids, vectors)
    started = time.perf_counter()
    ivf = IVFIndex(ids, vectors, sc.ivf_nlist, sc.ivf_nprobe)
    build_s = time.perf_counter() - started
    truth = [{i for i, _ in row} for row in exact.top_k(queries, 50)]
    out = {"items": n, "dim": dim, "topics": topics, "ivf_nlist": ivf.nlist, "ivf_nprobe": ivf.nprobe,
           "ivf_build_s": round(build_s, 2)}
    for name, index in (("float32", exact), ("bfloat16", LocalIndex(ids, vectors, "bfloat16")), ("ivf", ivf)):
        got = index.top_k(queries, 50)
        out[f"{name}_recall_at_50"] = round(float(np.mean([len({i for i, _ in g} & t) / 50 for g, t in zip(got, truth)])), 4)
        out[f"{name}_ms_per_8_queries"] = round(_median_ms(lambda: index.top_k(queries[:8], 50)), 2)
    return out


def _median_ms(run, repeats: int = 20) -> float:
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        timings.append(time.perf_counter() - started)
    return float(np.median(timings)) * 1000


def _answers(address: str, arm: str) -> list[list[str]]:
    """Top-50 item ids of the first RECALL_USERS users, asked one by one."""
    import grpc

    from xdm.v1 import recall_pb2, recall_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub = recall_pb2_grpc.RecallStub(channel)
        return [[item.item_id for item in stub.Recall(recall_pb2.RecallRequest(user_id=f"u{u}", k=50, arm=arm),
                                                      timeout=10).items] for u in range(RECALL_USERS)]


def _recall(got: list[list[str]], exact: list[list[str]]) -> float:
    """Mean share of the exact top-50 that an approximate server also returned."""
    return round(float(np.mean([len(set(g) & set(e)) / max(len(e), 1) for g, e in zip(got, exact)])), 4)


def _server_metrics(port: int) -> dict[tuple[str, str], float]:
    """(histogram[:stage], sum|count) of the server's batch-size and per-stage histograms, from /metrics."""
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    values: dict[tuple[str, str], float] = {}
    with urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:
        for family in text_string_to_metric_families(page.read().decode()):
            if family.name not in ("xdm_recall_batch_size", "xdm_recall_stage_seconds", "xdm_gc_pause_seconds"):
                continue
            for sample in family.samples:
                part = sample.name.removeprefix(family.name + "_")
                label = sample.labels.get("stage") or sample.labels.get("generation") or ""
                if part in ("sum", "count"):
                    values[(f"{family.name}:{label}", part)] = sample.value
    return values


def _batch_stats(before: dict, after: dict) -> dict:
    """Mean batch size, mean ms per batch in each stage, and full garbage collections (how many, mean ms),
    over one load level."""
    def mean(key: str) -> float | None:
        count = after.get((key, "count"), 0) - before.get((key, "count"), 0)
        return (after.get((key, "sum"), 0) - before.get((key, "sum"), 0)) / count if count else None

    stats = {"batch_mean": mean("xdm_recall_batch_size:")}
    for stage in ("queue", "tower", "search"):
        seconds = mean(f"xdm_recall_stage_seconds:{stage}")
        stats[f"{stage}_ms"] = None if seconds is None else seconds * 1000
    full = "xdm_gc_pause_seconds:2"  # full collections: the ones long enough to show in a p99
    stats["gc_full"] = int(after.get((full, "count"), 0) - before.get((full, "count"), 0))
    seconds = mean(full)
    stats["gc_full_ms"] = None if seconds is None else seconds * 1000
    return stats


def _cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds of the server process with its children (the compute process) and of its main thread
    (the event loop), from /proc (Linux)."""
    def seconds(stat_path: str) -> float:
        try:
            with open(stat_path) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # a child that ended between listing and reading
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    children = child_pids(pid)
    return {"process": seconds(f"/proc/{pid}/stat") + sum(seconds(f"/proc/{c}/stat") for c in children),
            "loop": seconds(f"/proc/{pid}/task/{pid}/stat")}


def _cpu_per_request(before: dict[str, float], after: dict[str, float], requests: int) -> dict:
    """Server CPU ms per answered request: all threads and the compute process, and the event loop's share."""
    per = 1000 / max(requests, 1)
    return {"cpu_ms": (after["process"] - before["process"]) * per, "loop_cpu_ms": (after["loop"] - before["loop"]) * per}


def _planned_rows(args, sizes) -> int:
    per_server = {name: sum(1 for n in sizes for c in args.concurrency
                            if name in FULL_SWEEP or c == 8 or n == max(sizes)) for name in args.servers}
    return len(args.concurrency) + sum(per_server.values())


def _progress(bar, row: dict) -> None:
    bar.update()
    bar.write(f"{row['server']} {row['items']} c={row['concurrency']}: p50 {row['p50_ms']:.2f} ms, "
              f"p99 {row['p99_ms']:.2f} ms, {row['qps']:.0f} QPS")


def _row(server: str, items, concurrency: int, stats: dict) -> dict:
    stats = {**stats, "load_1m": os.getloadavg()[0]}
    return {"server": server, "items": items, "concurrency": concurrency, **{k: round(v, 3) if isinstance(v, float) else v
                                                                             for k, v in stats.items()}}


def _report(results: dict) -> None:
    echo = {r["concurrency"]: r for r in results["rows"] if r["server"] == "echo"}
    print(f"\nRecall latency on loopback ({results['cores']} cores, {USERS} users, k=50); per batch: mean size, "
          "ms queued / in tower / in search; per request: server CPU ms, of it on the event loop; "
          "full garbage collections during the row and their mean ms; load = 1-minute load average")
    print(f"Milvus: {results.get('milvus', 'lite')}, index {results.get('index_type', 'FLAT')}; mcpu = Milvus's CPU ms "
          "per answer")
    print(f"{'server':<8} {'items':>7} {'conc':>4} {'p50 ms':>8} {'p99 ms':>8} {'QPS':>8} {'p99/echo':>9} {'errors':>6}"
          f" {'batch':>6} {'queue':>6} {'tower':>6} {'search':>6} {'cpu':>5} {'loop':>5} {'mcpu':>5} {'gc2':>3} {'gc2ms':>6}"
          f" {'load':>5}")
    for r in results["rows"]:
        ratio = r["p99_ms"] / echo[r["concurrency"]]["p99_ms"]
        r["p99_vs_echo"] = round(ratio, 1)
        server_view = " ".join(_cell(r.get(key)) for key in ("batch_mean", "queue_ms", "tower_ms", "search_ms"))
        server_view += "".join(f" {r[key]:>5.2f}" if key in r else f" {'-':>5}"
                               for key in ("cpu_ms", "loop_cpu_ms", "milvus_cpu_ms"))
        server_view += f" {r['gc_full']:>3} {_cell(r.get('gc_full_ms'))}" if "gc_full" in r else f" {'-':>3} {_cell(None)}"
        print(f"{r['server']:<8} {r['items']!s:>7} {r['concurrency']:>4} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
              f"{r['qps']:>8.0f} {ratio:>9.1f} {r['errors']:>6} {server_view} {r['load_1m']:>5.1f}")
    print("publish (s):", results["publish_s"])
    print("recall@50 against the float32 full scan:", results["recall_at_50"] or "not measured")
    print("in process, clustered vectors:", results["in_process"])
    for r in results["rows"]:
        if "repeats" in r:
            print(f"{r['server']} {r['items']} c={r['concurrency']}: {r['repeats']} repeats, p99 median "
                  f"{r['p99_ms']:.2f} ms, range {r['p99_min_ms']:.2f}-{r['p99_max_ms']:.2f} ms")
    out = ROOT / results["out"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    out.with_suffix(".md").write_text(_markdown(results))
    _plot(results, out.with_suffix(".png"))
    print(f"wrote {out} and its .md and .png")


def _markdown(results: dict) -> str:
    """The rows as a markdown table: latency, throughput and CPU per answer (server, Milvus, both)."""
    lines = [f"Recall on loopback, {results['cores']} cores, k=50, Milvus {results.get('milvus', 'lite')} "
             f"(index {results.get('index_type', 'FLAT')}, ef {results.get('search_ef', '-')}, nprobe "
             f"{results.get('search_nprobe', '-')}); command in "
             "bench/serving_latency.py's docstring.", "",
             "| server | items | C | p50 ms | p99 ms | QPS | p99 / echo | server CPU ms/answer | Milvus CPU ms/answer "
             "| recall@50 | load |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results["rows"]:
        recall = results["recall_at_50"].get(f"{r['server']} {r['items']}", 1.0 if r["server"] == "exact" else None)
        cells = [r["server"], r["items"], r["concurrency"], f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}",
                 f"{r['qps']:.0f}", f"{r.get('p99_vs_echo', 0):.1f}", _md(r.get("cpu_ms")), _md(r.get("milvus_cpu_ms")),
                 _md(recall, 3), f"{r['load_1m']:.1f}"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += ["", f"publish (s): {results['publish_s']}"]
    return "\n".join(lines) + "\n"


def _md(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _plot(results: dict, path: Path) -> None:
    """p99 and CPU per answer (server + Milvus) against catalogue size, a line per server variant."""
    from xdm.plotting import pyplot

    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    rows = [r for r in results["rows"] if r["server"] != "echo"]
    for conc in sorted({r["concurrency"] for r in rows}):
        for server in dict.fromkeys(r["server"] for r in rows):
            mine = sorted((r for r in rows if r["server"] == server and r["concurrency"] == conc),
                          key=lambda r: r["items"])
            if not mine:
                continue
            items = [r["items"] for r in mine]
            label = f"{server} C={conc}"
            left.plot(items, [r["p99_ms"] for r in mine], marker="o", label=label)
            right.plot(items, [r.get("cpu_ms", 0) + r.get("milvus_cpu_ms", 0) for r in mine], marker="o", label=label)
    for axis, title in ((left, "p99 latency (ms)"), (right, "CPU per answer, server + Milvus (ms)")):
        axis.set_xscale("log")
        axis.set_xlabel("items")
        axis.set_title(title)
        axis.legend(fontsize=8)
    fig.suptitle(f"Recall, Milvus {results.get('milvus', 'lite')} ({results.get('index_type', 'FLAT')})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _cell(value: float | None) -> str:
    return f"{'-':>6}" if value is None else f"{value:>6.2f}"


async def _echo_server(port: int) -> None:
    """The baseline: the same service, answering a fixed 50-item response with no work at all."""
    import grpc

    from xdm.v1 import recall_pb2, recall_pb2_grpc

    answer = recall_pb2.RecallResponse(items=[recall_pb2.ScoredItem(item_id=f"i{n}", score=1.0) for n in range(50)])

    class Echo(recall_pb2_grpc.RecallServicer):
        async def Recall(self, request, context):
            return answer

    server = grpc.aio.server()
    recall_pb2_grpc.add_RecallServicer_to_server(Echo(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def _cores() -> int:
    import os

    return os.cpu_count() or 0


def _names(text: str) -> tuple[str, ...]:
    names = tuple(text.split(","))
    unknown = [n for n in names if n not in SERVERS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown server {unknown[0]!r}; choose from {', '.join(SERVERS)}")
    return names


def _numbers(text: str) -> tuple[int, ...]:
    return tuple(int(n) for n in text.split(","))


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="requests per load level (C=1 gets a quarter)")
    parser.add_argument("--seconds", type=float, default=20.0, help="time bound per load level")
    parser.add_argument("--quick", action="store_true", help="10 k items only")
    parser.add_argument("--servers", type=_names, default=tuple(SERVERS), help="server variants, comma-separated")
    parser.add_argument("--sizes", type=_numbers, default=(10_000, 100_000), help="catalogue sizes, comma-separated")
    parser.add_argument("--concurrency", type=_numbers, default=(1, 8, 32), help="load levels, comma-separated")
    parser.add_argument("--repeats", type=int, default=1, help="loads per row; the row reports their medians")
    parser.add_argument("--milvus", choices=tuple(MILVUS_INDEX), default="lite",
                        help="Milvus Lite, or a real Milvus standalone with HNSW versions")
    parser.add_argument("--index", choices=INDEX_TYPES, default="", help="milvus.index_type (default: per --milvus)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results file")
    parser.add_argument("--echo-port", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    main()
