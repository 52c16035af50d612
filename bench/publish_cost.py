"""Publish cost: seconds to write one version's item vectors into Milvus Lite, full and delta, in one run.

Three ways to publish the same catalogue (random 64-dim float32 vectors), each timed from the first call
to a loaded, counted collection:
- `old`: the insert path before bulk publishing (5 k rows a call, one numpy row at a time to a list, the
  index declared at creation), kept here as the baseline;
- `bulk`: learner/vector_store.write_version (calls of ~1 MB from one tolist() each, one flush, the
  index built once after the rows are in);
- `delta`: learner/vector_delta.diff against the base plus vector_store.write_delta of the changed rows,
  at the number of rows the online learner changes between two publishes.
That number is measured first, from real training: the learner's own Trainer and rehearsal, at its
default cadence (learner.publish_every_steps steps, batch_size, n_negatives, rehearsal_steps of the
`local` profile), on a simulated world of --world-items items; it records the rows that differ between
consecutive snapshots and between each snapshot and the first (what a delta on one base holds as the
base ages). A row changes only when a step touches it (the batch's items and windows and the sampled
negatives: AdaGrad gives an untouched row exactly 0), so the count is set by the steps between publishes,
not by the catalogue; the larger catalogues' deltas are published at the measured count, and their
share of the catalogue is printed. The extrapolation to 30 M items is linear in the rows written, from
the 1 M run (µs per row). Where a full publish's time goes is recorded too: wall seconds per Milvus call
(insert, flush, index, load, ...) and the CPU seconds this (client) process spent in it, the rest being
the server's. Writes bench/results/publish_cost/publish_cost.{json,md,png} (--milvus standalone: its
standalone/ folder).

    .venv/bin/python bench/publish_cost.py [--sizes 100000,1000000] [--world-items 100000] [--publishes 10]
        [--milvus lite|standalone] [--changed-rows R1,R2 | --training-from RESULT.json (skip training)]

The committed results: `--sizes 100000,1000000 --world-items 100000 --publishes 6` measured the training
share (5 min), then the publishes were rerun with `--training-from` that JSON, for Milvus Lite and with
`--milvus standalone`.
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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from infra.services import LITE_KEEPALIVE_S, start_milvus  # noqa: E402
from learner import vector_store  # noqa: E402
from learner.vector_delta import Base, diff  # noqa: E402
from xdm.config import MilvusConfig, load_config  # noqa: E402

DIM = 64
CATALOGUE_30M = 30_000_000
OUT = Path("bench/results/publish_cost")


def vector_store_write(client, cfg: MilvusConfig, name: str, ids: list[str], vectors: np.ndarray) -> None:
    """write_version under the collection name `name` (the bench's own numbering)."""
    version = int(name.rpartition("_v")[2])
    vector_store.write_version(client, cfg, "bench", version, ids, vectors)


def old_write_version(client, cfg: MilvusConfig, name: str, ids: list[str], vectors: np.ndarray) -> None:
    """The publish path before this bench's change (learner/vector_store.py at 79da456), as the baseline."""
    timeout = cfg.call_timeout_s
    client.create_collection(name, schema=vector_store._schema(vectors.shape[1]),
                             index_params=vector_store._index(client, cfg), consistency_level="Strong", timeout=timeout)
    for start in range(0, len(ids), 5000):
        rows = [{vector_store.ID_FIELD: ids[i], vector_store.VECTOR_FIELD: vectors[i].tolist()}
                for i in range(start, min(start + 5000, len(ids)))]
        client.insert(name, rows, timeout=timeout)
    client.flush(name, timeout=timeout)
    vector_store._compact(client, name, timeout)
    client.load_collection(name, timeout=timeout)
    assert vector_store._count(client, name, timeout) == len(ids)


def changed_rows_in_training(world_items: int, publishes: int, seed: int) -> dict:
    """Rows changed between consecutive publishes, and since the first, of the learner at its defaults."""
    from learner.online import OnlineLearner
    from replay.simulate import simulate
    from stream.samples import flush, step
    from stream.windows import UserState
    from xdm.log_format import read_events, read_items
    from xdm.records import Item

    cfg = load_config("local", env={})
    lc = cfg.learner
    with tempfile.TemporaryDirectory() as tmp:
        simulate(max(2000, world_items // 20), world_items, 4, seed, tmp, progress=False)
        items = read_items(tmp)
        states: dict[str, UserState] = {}
        samples = []
        for event in read_events(tmp):
            state = states.setdefault(event.user_id, UserState())
            samples.extend(step(state, event, items.get(event.item_id) or Item(event.item_id), cfg.windows,
                                cfg.samples).samples)
    learner = OnlineLearner(cfg)  # its Trainer and rehearsal, as the online loop drives them (learner/online.py)
    trainer, rehearsal = learner.trainer, learner.rehearsal
    snapshots, at = [], 0
    for start in range(0, len(samples), lc.batch_size):
        batch = samples[start:start + lc.batch_size]
        trainer.step(batch)
        rehearsal.remember(((start, i), s) for i, s in enumerate(batch))
        for again in rehearsal.batches(lc.batch_size):
            trainer.step(again, rehearsal=True)
        if trainer.steps - at >= lc.publish_every_steps:
            at = trainer.steps
            ids, vectors = trainer.item_vectors()
            snapshots.append((ids, vectors.numpy().copy()))
            if len(snapshots) > publishes:
                break
    # the first snapshots come from a model still warming up (lr ramp, new items every batch): skip one
    first_ids, first_vectors = snapshots[1]
    base = Base(first_ids, first_vectors)
    consecutive, since_base = [], []
    for (ids_a, vec_a), (ids_b, vec_b) in zip(snapshots[1:], snapshots[2:]):
        consecutive.append(diff(Base(ids_a, vec_a), ids_b, vec_b).rows)
        since_base.append(diff(base, ids_b, vec_b).rows)
    items_now = len(snapshots[-1][0])
    return {"world_items": world_items, "samples": len(samples), "items_trained": items_now,
            "publish_every_steps": lc.publish_every_steps, "batch_size": lc.batch_size,
            "n_negatives": cfg.model.n_negatives, "rehearsal_steps": lc.rehearsal_steps,
            "changed_consecutive": consecutive, "changed_since_base": since_base,
            "share_consecutive": float(np.median(consecutive)) / items_now,
            "share_since_base_last": since_base[-1] / items_now}


STORES = {"lite": "Milvus Lite (milvus-lite server process)", "standalone": "Milvus standalone 2.3.5 (PyPI milvus)"}


def start_store(kind: str, root: Path):
    """The Milvus to publish into, started on loopback, and the config that reaches it."""
    if kind == "lite":
        milvus = start_milvus(root / "milvus", root / "logs")
        return milvus, MilvusConfig(uri=milvus.address, keepalive_s=LITE_KEEPALIVE_S, call_timeout_s=600)
    from infra.services import start_milvus_standalone  # needs the PyPI package milvus

    milvus = start_milvus_standalone(root / "milvus", root / "logs")
    return milvus, MilvusConfig(uri=milvus.address, call_timeout_s=600)


class TimedClient:
    """A MilvusClient whose calls add their wall and this process's CPU seconds to `phases` by name."""

    def __init__(self, client) -> None:
        self._client = client
        self.phases: dict[str, dict[str, float]] = {}

    def __getattr__(self, name: str):
        method = getattr(self._client, name)

        def call(*args, **kwargs):
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                return method(*args, **kwargs)
            finally:
                phase = self.phases.setdefault(name, {"wall_s": 0.0, "client_cpu_s": 0.0})
                phase["wall_s"] += time.perf_counter() - wall
                phase["client_cpu_s"] += time.process_time() - cpu

        return call


def timed(run) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def publish_costs(client, cfg: MilvusConfig, n: int, delta_rows: list[int], seed: int) -> dict:
    rng = np.random.default_rng(seed)
    ids = [f"item{i:08d}" for i in range(n)]
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    out: dict = {"items": n}
    # old, bulk, bulk, old: a load that drifts during the run (other jobs share the cores) weighs on both
    old, bulk = TimedClient(client), TimedClient(client)
    runs: dict[str, list[float]] = {"old": [], "bulk": []}
    for attempt, path in enumerate(("old", "bulk", "bulk", "old")):
        name = vector_store.collection_name(cfg, "bench", n + 100 + attempt)
        write = old_write_version if path == "old" else vector_store_write
        runs[path].append(timed(lambda: write(old if path == "old" else bulk, cfg, name, ids, vectors)))
        if attempt < 3:
            client.drop_collection(name)
    base_name = name  # the last one written stays, as the deltas' base
    out["old_runs_s"], out["bulk_runs_s"] = runs["old"], runs["bulk"]
    out["old_s"], out["bulk_s"] = float(np.mean(runs["old"])), float(np.mean(runs["bulk"]))
    out["old_phases"] = {k: {m: v / 2 for m, v in p.items()} for k, p in old.phases.items()}  # per publish
    out["bulk_phases"] = {k: {m: v / 2 for m, v in p.items()} for k, p in bulk.phases.items()}
    base = Base(ids, vectors)
    out["deltas"] = []
    for i, rows in enumerate(delta_rows, start=1):
        now = vectors.copy()
        touched = rng.choice(n, size=min(rows, n), replace=False)
        now[touched] += 0.01 * rng.standard_normal((len(touched), DIM)).astype(np.float32)
        started = time.perf_counter()
        delta = diff(base, ids, now)
        diff_s = time.perf_counter() - started
        write_s = timed(lambda: vector_store.write_delta(client, cfg, "bench", n + 200 + i, base_name, delta))
        out["deltas"].append({"rows": delta.rows, "share": delta.rows / n, "diff_s": diff_s, "write_s": write_s,
                              "seconds": diff_s + write_s})
        client.drop_collection(vector_store.collection_name(cfg, "bench", n + 200 + i))
    client.drop_collection(base_name)
    return out


def extrapolate(row: dict) -> dict:
    """Seconds at 30 M items: a full publish linear in the items, from this size's cost per item."""
    n = row["items"]
    full = {k: row[k] / n * CATALOGUE_30M for k in ("old_s", "bulk_s")}
    # the same rows written cost the same at any catalogue size; only the diff scans the whole table
    deltas = [{"rows": d["rows"], "seconds": d["write_s"] + d["diff_s"] / n * CATALOGUE_30M} for d in row["deltas"]]
    return {**full, "deltas": deltas}


def write_markdown(result: dict, path: Path) -> None:
    share = result["training"]
    lines = [f"# Publish cost ({result['milvus']}, one run)", ""]
    if share is not None:
        lines += [f"Rows changed between two publishes of the online learner at its defaults "
                  f"({share['publish_every_steps']} steps, batch {share['batch_size']}, {share['n_negatives']} negatives, "
                  f"{share['rehearsal_steps']} rehearsal steps a batch) on a simulated world of "
                  f"{share['items_trained']:,} trained items: median {int(np.median(share['changed_consecutive'])):,} "
                  f"({share['share_consecutive']:.1%}); since the base after {len(share['changed_since_base'])} "
                  f"publishes: {share['changed_since_base'][-1]:,} ({share['share_since_base_last']:.1%}).", ""]
    lines += ["| items | old full (s) | bulk full (s) | old / bulk | delta rows | delta (s) | full / delta |",
             "|---|---|---|---|---|---|---|"]
    for row in result["sizes"]:
        for d in row["deltas"]:
            lines.append(f"| {row['items']:,} | {row['old_s']:.1f} | {row['bulk_s']:.1f} | {row['old_s'] / row['bulk_s']:.2f} "
                         f"| {d['rows']:,} ({d['share']:.2%}) | {d['seconds']:.2f} | {row['bulk_s'] / d['seconds']:.0f} |")
    lines += ["", "Full publishes ran old, bulk, bulk, old; each figure is the mean of its two."]
    lines += ["", "Where a full publish's seconds go (largest size; wall, and this client's CPU in it):", ""]
    for path_name in ("old", "bulk"):
        phases = result["sizes"][-1][f"{path_name}_phases"]
        lines.append(f"- {path_name}: " + ", ".join(f"{name} {p['wall_s']:.1f} s (client {p['client_cpu_s']:.1f})"
                                                  for name, p in sorted(phases.items(), key=lambda kv: -kv[1]["wall_s"])
                                                  if p["wall_s"] >= 0.05))
    x = result["extrapolation_30m"]
    lines += ["", f"At 30 M items (linear from the {result['extrapolated_from']:,}-item run): old full "
              f"{x['old_s'] / 60:.0f} min, bulk full {x['bulk_s'] / 60:.0f} min, "
              + ", ".join(f"delta of {d['rows']:,} rows {d['seconds']:.0f} s" for d in x["deltas"]) + "."]
    path.write_text("\n".join(lines) + "\n")


def plot(result: dict, path: Path) -> None:
    from xdm.plotting import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    sizes = [r["items"] for r in result["sizes"]]
    ax.plot(sizes, [r["old_s"] for r in result["sizes"]], "o-", label="full, old insert path")
    ax.plot(sizes, [r["bulk_s"] for r in result["sizes"]], "s-", label="full, bulk")
    ax.plot(sizes, [r["deltas"][0]["seconds"] for r in result["sizes"]], "^-",
            label=f"delta ({result['sizes'][0]['deltas'][0]['rows']:,} changed rows)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("items in the catalogue")
    ax.set_ylabel(f"publish seconds ({result['milvus'].split(' (')[0]})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--world-items", type=int, default=100_000)
    parser.add_argument("--publishes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--milvus", choices=("lite", "standalone"), default="lite",
                        help="Milvus Lite (the default store) or a real Milvus standalone (infra/services.py)")
    parser.add_argument("--training-from", default="",
                        help="reuse the training measurement of an earlier result JSON instead of training again")
    parser.add_argument("--changed-rows", default="",
                        help="delta sizes to publish (comma-separated rows) instead of measuring them in training")
    parser.add_argument("--out", default=None, help=f"default {OUT}, or {OUT}/standalone")
    args = parser.parse_args()
    out = Path(args.out or (OUT if args.milvus == "lite" else OUT / "standalone"))
    out.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    if args.training_from:
        training = json.loads(Path(args.training_from).read_text())["training"]
        delta_rows = [int(np.median(training["changed_consecutive"])), training["changed_since_base"][-1]]
    elif args.changed_rows:
        training = None
        delta_rows = [int(r) for r in args.changed_rows.split(",")]
    else:
        training = changed_rows_in_training(args.world_items, args.publishes, args.seed)
        print(f"training: {training['items_trained']} items, changed rows between publishes "
              f"{training['changed_consecutive']}, since base {training['changed_since_base']} "
              f"({time.perf_counter() - started:.0f} s)", flush=True)
        delta_rows = [int(np.median(training["changed_consecutive"])), training["changed_since_base"][-1]]

    with tempfile.TemporaryDirectory() as tmp:
        milvus, cfg = start_store(args.milvus, Path(tmp))
        client = vector_store.connect(cfg)
        try:
            rows = []
            for n in (int(s) for s in args.sizes.split(",")):
                rows.append(publish_costs(client, cfg, n, delta_rows, args.seed))
                print(json.dumps(rows[-1]), flush=True)
        finally:
            client.close()
            milvus.stop()
    largest = rows[-1]
    result = {"command": " ".join(sys.argv), "milvus": STORES[args.milvus], "dim": DIM,
              "load_avg": os.getloadavg(), "training": training, "sizes": rows,
              "extrapolated_from": largest["items"], "extrapolation_30m": extrapolate(largest)}
    (out / "publish_cost.json").write_text(json.dumps(result, indent=2))
    write_markdown(result, out / "publish_cost.md")
    plot(result, out / "publish_cost.png")
    print((out / "publish_cost.md").read_text())


if __name__ == "__main__":
    main()
