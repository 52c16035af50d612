import asyncio
import pickle
import threading
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest

from serving import batcher
from serving import compute as compute_module
from serving.ivf import IVFIndex
from serving.search import LocalIndex, build_local_index, check_local_index, faster_scan
from xdm.config import ServingConfig
from xdm.errors import ConfigError


def _catalogue(n: int, dim: int = 16, seed: int = 0) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    return [f"i{r}" for r in range(n)], rng.normal(size=(n, dim)).astype(np.float32)


def _clustered(n: int, clusters: int = 64, dim: int = 32, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Items around topic centres, like trained item embeddings (categories, brands)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    vectors = centres[rng.integers(0, clusters, size=n)] + 0.4 * rng.normal(size=(n, dim))
    return [f"i{r}" for r in range(n)], vectors.astype(np.float32)


def _recall(index, exact: LocalIndex, queries: np.ndarray, k: int) -> float:
    got = index.top_k(queries, k)
    truth = exact.top_k(queries, k)
    return float(np.mean([len({i for i, _ in g} & {i for i, _ in t}) / k for g, t in zip(got, truth)]))


def test_local_index_is_exact_max_inner_product():
    ids, vectors = _catalogue(500, dim=8)
    queries = np.random.default_rng(1).normal(size=(3, 8)).astype(np.float32)
    hits = LocalIndex(ids, vectors).top_k(queries, 10)
    for q, row in zip(queries, hits):
        expected = np.argsort(-(vectors @ q))[:10]
        assert [item for item, _ in row] == [ids[i] for i in expected]
        assert np.allclose([s for _, s in row], (vectors @ q)[expected], rtol=1e-5)


def test_bfloat16_scan_returns_the_exact_answer_with_float32_scores():
    ids, vectors = _catalogue(20_000, dim=64)
    queries = np.random.default_rng(1).normal(size=(16, 64)).astype(np.float32)
    exact = LocalIndex(ids, vectors)
    fast = LocalIndex(ids, vectors, scan="bfloat16")
    assert _recall(fast, exact, queries, 50) >= 0.999
    for row in fast.top_k(queries[:1], 50)[0]:
        assert row[1] == pytest.approx(float(vectors[int(row[0][1:])] @ queries[0]), rel=1e-5)


@pytest.mark.parametrize("make", [lambda ids, v: LocalIndex(ids, v), lambda ids, v: LocalIndex(ids, v, "bfloat16"),
                                  lambda ids, v: IVFIndex(ids, v, nlist=8, nprobe=2)])
def test_k_larger_than_the_catalogue_returns_everything_best_first(make):
    ids, vectors = _catalogue(5, dim=4)
    query = np.ones((1, 4), dtype=np.float32)
    hits = make(ids, vectors).top_k(query, 50)[0]
    assert [i for i, _ in hits] == [ids[r] for r in np.argsort(-(vectors @ query[0]))]


@pytest.mark.parametrize("make", [lambda: LocalIndex([], np.zeros((0,), dtype=np.float32)),
                                  lambda: LocalIndex([], np.zeros((0,), dtype=np.float32), "bfloat16"),
                                  lambda: IVFIndex([], np.zeros((0,), dtype=np.float32), nlist=8, nprobe=2)])
def test_an_empty_catalogue_answers_nothing(make):
    index = make()
    assert len(index) == 0
    assert index.top_k(np.ones((2, 4), dtype=np.float32), 10) == [[], []]


def test_ivf_recall_on_clustered_random_data():
    ids, vectors = _clustered(20_000)
    queries = _clustered(64, seed=1)[1]
    ivf = IVFIndex(ids, vectors, nlist=128, nprobe=16)
    assert ivf.nlist == 128 and ivf.nprobe == 16
    assert _recall(ivf, LocalIndex(ids, vectors), queries, 50) >= 0.95


def test_ivf_scores_are_exact_inner_products():
    ids, vectors = _catalogue(4_000)
    query = np.random.default_rng(1).normal(size=(1, 16)).astype(np.float32)
    for item, score in IVFIndex(ids, vectors, nlist=32, nprobe=4).top_k(query, 20)[0]:
        assert score == pytest.approx(float(vectors[int(item[1:])] @ query[0]), rel=1e-5)


def test_ivf_probing_every_list_is_exact():
    ids, vectors = _catalogue(4_000)
    queries = np.random.default_rng(1).normal(size=(8, 16)).astype(np.float32)
    ivf = IVFIndex(ids, vectors, nlist=32, nprobe=32)
    assert _recall(ivf, LocalIndex(ids, vectors), queries, 50) == 1.0


def test_ivf_on_a_small_catalogue_uses_fewer_lists_and_keeps_the_scanned_share():
    ids, vectors = _catalogue(39 * 10)
    ivf = IVFIndex(ids, vectors, nlist=100, nprobe=20)
    assert (ivf.nlist, ivf.nprobe) == (10, 2)
    assert len(ivf.list_sizes()) == 10 and sum(ivf.list_sizes()) == len(ids)


def test_ivf_answers_exactly_when_the_probed_lists_hold_fewer_than_k_items():
    ids, vectors = _catalogue(400)
    queries = np.random.default_rng(1).normal(size=(4, 16)).astype(np.float32)
    got = IVFIndex(ids, vectors, nlist=10, nprobe=1).top_k(queries, 200)
    for row, truth in zip(got, LocalIndex(ids, vectors).top_k(queries, 200)):
        assert len(row) == 200
        assert [s for _, s in row] == pytest.approx([s for _, s in truth], rel=1e-5, abs=1e-5)


def test_ivf_builds_the_same_lists_and_answers_for_the_same_version():
    ids, vectors = _clustered(4_000)
    queries = _clustered(8, seed=1)[1]
    first, second = IVFIndex(ids, vectors, nlist=64, nprobe=4), IVFIndex(ids, vectors, nlist=64, nprobe=4)
    assert first.list_sizes() == second.list_sizes()
    assert first.top_k(queries, 20) == second.top_k(queries, 20)


def test_build_local_index_follows_the_config():
    ids, vectors = _catalogue(1_000)
    assert isinstance(build_local_index(ids, vectors, ServingConfig(local_index="ivf", ivf_min_items=500)), IVFIndex)
    small = build_local_index(ids, vectors, ServingConfig(local_index="ivf", ivf_min_items=5_000))
    assert isinstance(small, LocalIndex) and small.scan == "float32"  # auto keeps float32 for small catalogues
    with pytest.raises(ConfigError, match="serving.local_index"):
        check_local_index(ServingConfig(local_index="hnsw"))
    with pytest.raises(ConfigError, match="local_index_scan"):
        check_local_index(ServingConfig(local_index_scan="int8"))


def test_auto_keeps_ivf_where_it_finds_the_full_scans_answers_and_scans_where_it_does_not():
    auto = ServingConfig(local_index="auto", ivf_min_items=1_000, ivf_nlist=64, ivf_nprobe=8, ivf_min_recall=0.95)
    ids, clustered = _clustered(4_000)
    kept = build_local_index(ids, clustered, auto)
    assert isinstance(kept, IVFIndex) and kept.probe_recall >= 0.95
    ids, isotropic = _catalogue(4_000, dim=32)  # no cluster structure: eight lists of 64 miss most of the top 50
    refused = build_local_index(ids, isotropic, auto)
    assert isinstance(refused, LocalIndex) and refused.probe_recall < 0.95
    assert isinstance(build_local_index(ids, isotropic, replace(auto, local_index="ivf")), IVFIndex)  # as asked
    small = build_local_index(ids[:500], isotropic[:500], auto)
    assert isinstance(small, LocalIndex) and small.probe_recall is None  # below ivf_min_items: never compared
    with pytest.raises(ConfigError, match="ivf_min_recall"):
        check_local_index(replace(auto, ivf_min_recall=1.5))


def test_faster_scan_names_a_scan_the_index_accepts():
    assert faster_scan(_catalogue(2_000)[1]) in ("float32", "bfloat16")


def test_the_index_is_searched_off_the_event_loop_and_the_next_batch_holds_what_arrived_meanwhile(monkeypatch):
    searching, release = threading.Event(), threading.Event()

    class SlowIndex:
        def top_k_arrays(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
            searching.set()
            if not release.wait(5):  # only the event loop sets it: a search on the loop would wait here forever
                raise TimeoutError("the search blocked the event loop")
            return np.full((len(queries), 1), "a", dtype=object), np.ones((len(queries), 1), dtype=np.float32)

    users = lambda keys: len(keys.lengths) // 3  # noqa: E731
    monkeypatch.setattr(compute_module, "user_vectors_of_keys",
                        lambda tower, keys: np.zeros((users(keys), 2), dtype=np.float32))
    no_windows = ((), (), ())
    tower = SimpleNamespace(index=SlowIndex(), info=None)

    async def scenario() -> tuple[int, int]:
        micro = batcher.MicroBatcher(search=None, max_batch=32, runners=1)
        micro.start()
        first = asyncio.create_task(micro.recall(tower, no_windows, 1))
        assert await asyncio.to_thread(searching.wait, 5)
        later = [asyncio.create_task(micro.recall(tower, no_windows, 1)) for _ in range(3)]
        await asyncio.sleep(0)  # the loop runs while the search blocks its thread
        release.set()
        answers = await asyncio.wait_for(asyncio.gather(first, *later), 5)
        await micro.stop()
        assert answers == [[("a", 1.0)]] * 4
        return micro.batches, micro.requests

    assert asyncio.run(scenario()) == (2, 4)


@pytest.mark.parametrize("make", [lambda ids, v: LocalIndex(ids, v), lambda ids, v: LocalIndex(ids, v, "bfloat16"),
                                  lambda ids, v: IVFIndex(ids, v, nlist=16, nprobe=4)])
@pytest.mark.parametrize("k", [1, 50, 5000])
def test_packed_hits_carry_exactly_the_pairs_top_k_gives(make, k):
    """What crosses the compute process's pipe (PackedHits) unpacks to the same ids and the same float scores,
    bit for bit, as the index's own pairs, k past the catalogue included."""
    ids, vectors = _clustered(2000, dim=16)
    index = make(ids, vectors)
    queries = np.random.default_rng(1).normal(size=(3, 16)).astype(np.float32)
    packed = compute_module.PackedHits.of(*index.top_k_arrays(queries, k))
    assert pickle.loads(pickle.dumps(packed)).unpack() == index.top_k(queries, k)


def test_packed_hits_of_an_empty_index_and_an_id_that_would_shift_the_split():
    empty = compute_module.PackedHits.of(*LocalIndex([], np.zeros((0, 4), np.float32)).top_k_arrays(np.ones((2, 4)), 5))
    assert empty.unpack() == [[], []]
    ids = np.array([["a", "b\x1fc"]], dtype=object)
    with pytest.raises(ValueError, match="item id"):
        compute_module.PackedHits.of(ids, np.ones((1, 2), dtype=np.float32))
