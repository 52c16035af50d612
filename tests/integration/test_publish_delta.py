"""Delta versions on the real broker and Milvus Lite (learner/vector_delta.py): along a chain of deltas on
one base, every reader (read_all, the in-memory index a server loads, per-request search in Milvus) sees
exactly each version's item vectors; retention keeps the base a kept delta needs and drops it after; and
the layout holds on a real Milvus standalone."""

from __future__ import annotations

import asyncio
import dataclasses

import numpy as np
import pytest

from conftest import samples_from_log
from learner import vector_store
from learner.online import OnlineLearner
from learner.publish import Snapshot, take_snapshot
from infra.stack import start_services
from learner.vector_delta import Base, diff
from serving.search import VectorSearch, load_local_index
from xdm.config import MilvusConfig, apply_overrides, load_config

K = 20


@pytest.fixture(scope="module")
def lite_stack(tmp_path_factory):
    """Broker and Milvus Lite shared by this module's tests: each publishes an arm of its own (its own
    collections, checkpoints and announcements), so they pass in any order or alone."""
    started = start_services(tmp_path_factory.mktemp("publish-delta") / "stack", load_config("test", env={}), "test")
    try:
        yield started
    finally:
        started.stop()


def _cfg(stack, arm: str, **extra):
    return apply_overrides(stack.cfg, {"learner.checkpoint_dir": str(stack.root / f"ckpt-{arm}"),
                                       "learner.evict_after_ms": 0, "serving.local_index": "exact", **extra})


def _versions_of(snap: Snapshot, rng: np.random.Generator):
    """The snapshots of a chain: a few rows moved each time, an item evicted, items added, one untouched."""
    ids, vectors = list(snap.item_ids), snap.vectors.copy()
    chain = []
    for step in range(4):
        vectors = vectors.copy()
        moved = rng.choice(len(ids), size=5, replace=False)
        vectors[moved] += rng.standard_normal((5, vectors.shape[1])).astype(np.float32)
        if step == 1:  # evicted: gone from the version, its base row must not come back
            ids = ids[:3] + ids[4:]
            vectors = np.delete(vectors, 3, axis=0)
        if step == 2:  # new items, one of them scoring high
            ids = ids + [f"new-{step}-a", f"new-{step}-b"]
            vectors = np.concatenate([vectors, 3 * rng.standard_normal((2, vectors.shape[1])).astype(np.float32)])
        chain.append(dataclasses.replace(snap, item_ids=ids, vectors=vectors))
    chain.append(dataclasses.replace(snap, item_ids=list(ids), vectors=vectors.copy()))  # nothing changed
    return chain


def _exact_top_k(snap: Snapshot, queries: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
    scores = queries @ snap.vectors.T
    order = np.argsort(-scores, axis=1)[:, :k]
    return [[(snap.item_ids[c], float(scores[r, c])) for c in row] for r, row in enumerate(order)]


def _assert_same_hits(got, want) -> None:
    for g, w in zip(got, want):
        assert [item for item, _ in g] == [item for item, _ in w]
        assert np.allclose([s for _, s in g], [s for _, s in w], rtol=1e-5, atol=1e-5)


@pytest.mark.timeout(240)
def test_every_reader_sees_each_delta_version_exactly(lite_stack, tiny_log):
    arm = "delta"
    cfg = _cfg(lite_stack, arm, **{"learner.publish_delta_max_share": 1.0})
    learner = OnlineLearner(cfg, arm, "xdm")
    learner.trainer.step(samples_from_log(tiny_log, cfg)[:32])
    first = take_snapshot(learner.trainer)
    rng = np.random.default_rng(5)
    chain = [first, *_versions_of(first, rng)]
    removed_vector = first.vectors[3]
    client = vector_store.connect(cfg.milvus)
    search = VectorSearch(cfg.milvus, timeout_s=30)
    try:
        for version, snap in enumerate(chain, start=1):
            info = learner.publisher.publish_snapshot(snap, version)
            base = vector_store.base_of(client, info.collection, 10)
            assert (base is None) == (version == 1), "the first version is full, the others deltas on it"
            assert info.items == len(snap.item_ids)
            want = {item: snap.vectors[r].tobytes() for r, item in enumerate(snap.item_ids)}

            ids, vectors = vector_store.read_all(client, info.collection, timeout_s=10)
            assert {item: vectors[r].tobytes() for r, item in enumerate(ids)} == want

            index = load_local_index(cfg.milvus, cfg.serving, info.collection)  # what a server's child loads
            assert {item: index.matrix[r].numpy().tobytes() for r, item in enumerate(index.ids)} == want

            # queries near moved, new and evicted items, and random ones
            queries = np.concatenate([snap.vectors[-6:], removed_vector[None] * 5,
                                      rng.standard_normal((4, snap.vectors.shape[1]))]).astype(np.float32)
            exact = _exact_top_k(snap, queries, K)
            _assert_same_hits(asyncio.run(search.top_k(info.collection, queries, K)), exact)
            _assert_same_hits(index.top_k(queries, K), exact)
        delta_rows = vector_store._count(client, vector_store.collection_name(cfg.milvus, arm, len(chain)), 10)
        assert 0 < delta_rows < len(first.item_ids) // 4, "a delta holds the rows changed since its base, not all"
    finally:
        search.close()
        client.close()
        learner.publisher.close()


@pytest.mark.timeout(240)
def test_retention_keeps_the_base_a_kept_delta_needs(lite_stack, tiny_log):
    arm = "keep"
    cfg = _cfg(lite_stack, arm, **{"learner.keep_versions": 2, "learner.publish_full_every": 3,
                              "learner.publish_delta_max_share": 0.5})
    learner = OnlineLearner(cfg, arm, "xdm")
    learner.trainer.step(samples_from_log(tiny_log, cfg)[:32])
    snap = take_snapshot(learner.trainer)
    rng = np.random.default_rng(9)
    client = vector_store.connect(cfg.milvus)

    def kept() -> dict[int, int | None]:
        """Each kept version and the number of its base (None when full)."""
        out = {}
        for v in vector_store.versions(client, cfg.milvus, arm):
            base = vector_store.base_of(client, vector_store.collection_name(cfg.milvus, arm, v), 10)
            out[v] = None if base is None else int(base.rpartition("_v")[2])
        return out

    try:
        seen = []
        for version in range(1, 8):
            vectors = snap.vectors.copy()
            vectors[rng.choice(len(vectors), size=3, replace=False)] += 1.0
            snap = dataclasses.replace(snap, vectors=vectors)
            info = learner.publisher.publish_snapshot(snap, version)
            seen.append(kept())
            ids, got = vector_store.read_all(client, info.collection, timeout_s=10)
            assert {i: got[r].tobytes() for r, i in enumerate(ids)} == \
                {i: snap.vectors[r].tobytes() for r, i in enumerate(snap.item_ids)}
        # v1 full, v2-v4 deltas on it (full_every 3), v5 full, v6-v7 deltas on v5
        assert seen[2] == {1: None, 2: 1, 3: 1}  # v1 is below the kept two, but v2 and v3 need it
        assert seen[3] == {1: None, 3: 1, 4: 1}
        assert seen[4] == {4: 1, 5: None, 1: None}  # v4 still applies to v1
        assert seen[5] == {5: None, 6: 5}  # v1 dropped once no kept delta needs it
        assert seen[6] == {5: None, 6: 5, 7: 5}

        client.drop_collection(vector_store.collection_name(cfg.milvus, arm, 5))  # the base vanishes
        info = learner.publisher.publish_snapshot(snap, 8)
        assert vector_store.base_of(client, info.collection, 10) is None, "no base: the version goes out in full"
    finally:
        client.close()
        learner.publisher.close()


@pytest.mark.timeout(180)
def test_a_delta_on_a_real_milvus_reads_and_searches_as_its_version(milvus_standalone):
    """The same layout on a real Milvus (a collection property, a filtered search): what Milvus Lite
    lets pass may not, e.g. an unknown property key or a filter on a bool field."""
    cfg = MilvusConfig(uri=milvus_standalone.address, collection_prefix="delta")  # FLAT: exact, comparable
    rng = np.random.default_rng(2)
    ids = [f"i{j}" for j in range(3000)]
    vectors = rng.standard_normal((3000, 32)).astype(np.float32)
    now_ids = ids[:5] + ids[6:] + ["new"]  # i5 evicted, one item added, 50 rows moved
    now = np.concatenate([np.delete(vectors, 5, axis=0), 4 * rng.standard_normal((1, 32)).astype(np.float32)])
    now[:50] += 1.0
    client = vector_store.connect(cfg)
    try:
        base = vector_store.write_version(client, cfg, "a", 1, ids, vectors)
        delta = diff(Base(ids, vectors), now_ids, now)
        name = vector_store.write_delta(client, cfg, "a", 2, base, delta)
        assert vector_store.base_of(client, name, 10) == base and delta.rows == 52
        got_ids, got = vector_store.read_all(client, name, timeout_s=30)
        assert {i: got[r].tobytes() for r, i in enumerate(got_ids)} == {i: now[r].tobytes() for r, i in enumerate(now_ids)}
        queries = np.concatenate([now[:10], 3 * vectors[5:6], now[-1:]])
        snap = Snapshot(item_ids=now_ids, vectors=now, model=None, vocab=None, popular=[], trained_samples=0, steps=0)
        _assert_same_hits(vector_store.search(client, name, queries, K, 10, ef=256), _exact_top_k(snap, queries, K))
        vector_store.write_delta(client, cfg, "a", 3, base, delta)
        assert vector_store.drop_versions_before(client, cfg, "a", 3) == [vector_store.collection_name(cfg, "a", 2)]
        assert vector_store.versions(client, cfg, "a") == [1, 3]  # v1 stays: v3 applies to it
    finally:
        client.close()
