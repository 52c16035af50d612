"""Recall latency under closed-loop load on loopback, against a bare gRPC echo server in the same run.

Starts the embedded broker and Milvus Lite, publishes one model version per catalogue size (10 k and 100 k
items) with the learner's own Publisher (its time is the "publish" figure), writes users' windows to the
windows changelog (what workers would have written), starts `xdm serve` processes and an echo server,
then drives each with C concurrent callers (C = 1, 8, 32), bounded in requests and seconds.

Server variants: `local` (default: exact in-memory index copied from the version's Milvus collection),
`milvus` (search Milvus per request, serving.local_index_max_items=0) and `nobatch` (local index, no
micro-batching). Writes bench/results/serving_latency.json and prints a table with the ratio to echo.

    .venv/bin/python bench/serving_latency.py [--requests 2000] [--seconds 20] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from infra.processes import free_port, port_open, start_process, wait_until  # noqa: E402
from infra.stack import config_env, start_services  # noqa: E402
from xdm.config import apply_overrides, load_config  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "serving_latency.json"
USERS = 2000
CONCURRENCY = (1, 8, 32)


def main() -> None:
    args = _args()
    if args.echo_port:
        asyncio.run(_echo_server(args.echo_port))
        return
    sizes = (10_000,) if args.quick else (10_000, 100_000)
    root = Path(tempfile.mkdtemp(prefix="xdm-bench-serving-"))
    cfg = load_config("local", env={}, overrides={"model.embed_dim": 64})
    stack = start_services(root / "stack", cfg, "local", arms=",".join(f"n{n}:1" for n in sizes))
    results: dict = {"machine": platform.machine(), "cores": _cores(), "users": USERS, "rows": [], "publish_s": {}}
    try:
        for n in sizes:
            results["publish_s"][str(n)] = _publish(stack.cfg, n)
        _write_windows(stack.cfg, max(sizes))
        servers = {
            "local": {},
            "nobatch": {"serving.batch_max": 1, "serving.batch_runners": 1},
            "milvus": {"serving.local_index_max_items": 0},
        }
        echo_port = free_port()
        echo = start_process("echo", [sys.executable, __file__, "--echo-port", str(echo_port)], root / "logs",
                             ports=(echo_port,))
        stack.processes.append(echo)
        wait_until(lambda: port_open("127.0.0.1", echo_port), 30, "echo server")
        for c in CONCURRENCY:
            results["rows"].append(_row("echo", "-", c, asyncio.run(_load(f"127.0.0.1:{echo_port}", "", c, args))))
        for name, overrides in servers.items():
            port = free_port()
            scfg = apply_overrides(stack.cfg, {"serving.port": port, **overrides})
            proc = start_process(f"server-{name}", [sys.executable, "-m", "xdm", "serve"], root / "logs",
                                 ports=(port,), env=config_env(scfg))
            stack.processes.append(proc)
            _wait_model(f"127.0.0.1:{port}", sizes)
            for n in sizes:
                for c in CONCURRENCY:
                    if name != "local" and c != 8 and n != max(sizes):
                        continue
                    stats = asyncio.run(_load(f"127.0.0.1:{port}", f"n{n}", c, args))
                    results["rows"].append(_row(name, n, c, stats))
            proc.stop()
            stack.processes.remove(proc)
    finally:
        stack.stop()
    _report(results)


def _publish(cfg, n: int) -> float:
    """Publish a version with n items through the learner's own code; returns its duration (s)."""
    import torch

    from learner.model import config_for
    from learner.online import model_overrides
    from learner.publish import Publisher
    from learner.trainer import Trainer
    from xdm.records import Item

    trainer = Trainer(config_for("xdm", **model_overrides(cfg)), device="cpu")
    for i in range(n):
        trainer.vocab.add_item(_item(i))
    trainer.model.grow_to(trainer.vocab.sizes())
    with torch.no_grad():
        trainer.model.item_out.weight.normal_(0, 0.3)
    publisher = Publisher(cfg, f"n{n}", "xdm")
    started = time.perf_counter()
    publisher.publish(trainer, 1)
    publisher.close()
    return round(time.perf_counter() - started, 2)


def _item(i: int):
    from xdm.records import Item

    return Item(f"i{i}", f"leaf{i % 500}", f"top{i % 20}", f"brand{i % 2000}", f"shop{i % 3000}")


def _write_windows(cfg, n_items: int) -> None:
    """Users with Table-1 sized windows (13 session, 21 long-term, 71 unclicked), as workers would write."""
    from kafka import KafkaProducer

    from stream.samples import step
    from stream.state_codec import encode_state
    from stream.topics import changelog_topic
    from stream.windows import UserState
    from xdm.records import Event

    rng = np.random.default_rng(0)
    producer = KafkaProducer(bootstrap_servers=cfg.kafka.bootstrap, acks="all", linger_ms=5)
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


def _row(server: str, items, concurrency: int, stats: dict) -> dict:
    return {"server": server, "items": items, "concurrency": concurrency, **{k: round(v, 3) if isinstance(v, float) else v
                                                                             for k, v in stats.items()}}


def _report(results: dict) -> None:
    echo = {r["concurrency"]: r for r in results["rows"] if r["server"] == "echo"}
    print(f"\nRecall latency on loopback ({results['cores']} cores, {USERS} users, k=50)")
    print(f"{'server':<8} {'items':>7} {'conc':>4} {'p50 ms':>8} {'p99 ms':>8} {'QPS':>8} {'p99/echo':>9} {'errors':>6}")
    for r in results["rows"]:
        ratio = r["p99_ms"] / echo[r["concurrency"]]["p99_ms"]
        r["p99_vs_echo"] = round(ratio, 1)
        print(f"{r['server']:<8} {r['items']!s:>7} {r['concurrency']:>4} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
              f"{r['qps']:>8.0f} {ratio:>9.1f} {r['errors']:>6}")
    print("publish (s):", results["publish_s"])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(f"wrote {RESULTS.relative_to(ROOT)}")


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


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="requests per load level (C=1 gets a quarter)")
    parser.add_argument("--seconds", type=float, default=20.0, help="time bound per load level")
    parser.add_argument("--quick", action="store_true", help="10 k items only")
    parser.add_argument("--echo-port", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    main()
