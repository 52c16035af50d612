import numpy as np

from serving.search import LocalIndex


def test_local_index_is_exact_max_inner_product():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(500, 8)).astype(np.float32)
    ids = [f"i{n}" for n in range(500)]
    queries = rng.normal(size=(3, 8)).astype(np.float32)
    hits = LocalIndex(ids, vectors).top_k(queries, 10)
    for q, row in zip(queries, hits):
        expected = np.argsort(-(vectors @ q))[:10]
        assert [item for item, _ in row] == [ids[i] for i in expected]
        assert np.allclose([s for _, s in row], (vectors @ q)[expected], rtol=1e-5)


def test_k_larger_than_the_catalogue_returns_everything():
    index = LocalIndex(["a", "b"], np.eye(2, dtype=np.float32))
    assert [i for i, _ in index.top_k(np.array([[1.0, 0.0]], dtype=np.float32), 5)[0]] == ["a", "b"]
