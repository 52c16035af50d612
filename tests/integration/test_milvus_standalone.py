"""The cluster path against a real Milvus (the PyPI `milvus` standalone, one server per test run): versions
published with an HNSW index, the alias swap, retention, and Recall answered by a search in Milvus per
request, and a restart. A real Milvus differs from Milvus Lite where these tests look: it refuses a "-" in
a collection name, and a search at Strong consistency waits for its next time tick (~200 ms)."""

from __future__ import annotations

import statistics
import time

import grpc
import numpy as np
import pytest

from conftest import samples_from_log
from infra.services import start_milvus_standalone
from serving_stack import answered_by_model, ask, clickers, start_serving_stack
from learner import vector_store
from xdm.config import MilvusConfig, load_config
from xdm.v1 import recall_pb2_grpc

ITEMS, DIM, K = 5_000, 64, 50


def _recall_at_k(got: list[list[tuple[str, float]]], queries: np.ndarray, vectors: np.ndarray) -> float:
    truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :K]
    return float(np.mean([len({item for item, _ in row} & {f"i{j}" for j in best}) / K
                          for row, best in zip(got, truth)]))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("index_type, knob, built", [
    ("HNSW", {"search_ef": 256}, {"M": "16", "efConstruction": "200"}),  # Milvus's own ef: recall 0.79 here
    ("IVF_FLAT", {"search_nprobe": 1024}, {"nlist": "1024"}),  # every list: exact; Milvus's own nprobe scans 8
])
def test_an_indexed_version_on_a_real_milvus_is_built_whole_searched_well_and_fast(milvus_standalone, index_type,
                                                                                     knob, built):
    cfg = MilvusConfig(uri=milvus_standalone.address, index_type=index_type, collection_prefix=index_type.lower(),
                       **knob)
    vectors = np.random.default_rng(1).standard_normal((ITEMS, DIM)).astype(np.float32)
    client = vector_store.connect(cfg)
    try:
        # a variant's name: a real Milvus takes no "-" in a collection name
        name = vector_store.write_version(client, cfg, "xdm-sasrec", 1, [f"i{j}" for j in range(ITEMS)], vectors)
        index = client.describe_index(name, vector_store.VECTOR_FIELD)
        assert index["index_type"] == index_type and {key: index[key] for key in built} == built
        # written whole before it is announced: a real Milvus searches rows not yet indexed by brute force
        assert index["pending_index_rows"] == 0 and index["indexed_rows"] == ITEMS

        queries = np.random.default_rng(9).standard_normal((16, DIM)).astype(np.float32)
        got = vector_store.search(client, name, queries, K, timeout_s=10, ef=cfg.search_ef, nprobe=cfg.search_nprobe)
        assert _recall_at_k(got, queries, vectors) >= 0.97

        # one query a call, as a server asks: the collection's Strong consistency would make every search
        # wait for the server's next time tick, ~200 ms
        seconds = []
        for query in queries:
            started = time.perf_counter()
            vector_store.search(client, name, query[None], K, timeout_s=10, ef=cfg.search_ef, nprobe=cfg.search_nprobe)
            seconds.append(time.perf_counter() - started)
        assert statistics.median(seconds) < 0.1
    finally:
        client.close()


@pytest.mark.timeout(300)
def test_recall_searches_a_real_milvus_per_request_across_a_version_swap(milvus_standalone, tmp_path, small_log):
    cfg = load_config("test", env={}, overrides={
        "milvus.uri": milvus_standalone.address, "milvus.index_type": "HNSW", "milvus.collection_prefix": "serving",
        "serving.local_index_max_items": "0"})  # every request searches Milvus
    # one arm: what is proved (the swap, retention, the exact top K) is per arm, and each arm costs a
    # publish to the real Milvus (~10 s: flush and compaction) and a load in the server
    served = start_serving_stack(tmp_path / "stack", small_log, cfg, milvus="external", arms=("xdm",))
    try:
        stack = served.stack
        stack.start_server()
        channel = grpc.insecure_channel(f"127.0.0.1:{stack.cfg.serving.port}")
        stub = recall_pb2_grpc.RecallStub(channel)
        user = clickers(small_log)[0]
        assert answered_by_model(stub, user, "xdm").model_version == 1

        learner = served.learners["xdm"]
        learner.trainer.step(samples_from_log(small_log, stack.cfg)[320:352])  # the first 320 trained version 1
        served.publishers["xdm"].publish(learner.trainer, 2)
        deadline = time.monotonic() + 60
        while ask(stub, user, arm="xdm").model_version != 2:  # a failed call raises: none may fail
            assert time.monotonic() < deadline, "the server did not move to version 2"
            time.sleep(0.3)

        milvus = stack.cfg.milvus
        collection = vector_store.collection_name(milvus, "xdm", 2)
        client = vector_store.connect(milvus)
        try:
            assert client.describe_alias(vector_store.alias_name(milvus, "xdm"))["collection_name"] == collection
            # retention as a later publish does it: the version the alias left goes, the served one stays
            assert vector_store.drop_versions_before(client, milvus, "xdm", 2) == [vector_store.collection_name(milvus, "xdm", 1)]
            ids, vectors = vector_store.read_all(client, collection, timeout_s=30)
        finally:
            client.close()
        answer = ask(stub, user, k=K, arm="xdm")
        assert answer.model_version == 2 and not answer.fallback and len(answer.items) == K
        # The answer is the exact top K: the user vector behind it, solved from K scores of DIM-dim items,
        # ranks every item of the version the same way.
        row = {item: i for i, item in enumerate(ids)}
        answered = [row[item.item_id] for item in answer.items]
        z, *_ = np.linalg.lstsq(vectors[answered], np.array([item.score for item in answer.items]), rcond=None)
        exact = set(np.argsort(-(vectors @ z))[:K].tolist())
        assert len(exact & set(answered)) >= K - 1  # one near-tie may swap at the border
        channel.close()
    finally:
        served.close()


@pytest.mark.timeout(120)
def test_a_restarted_standalone_keeps_its_address_and_versions(tmp_path):
    """What Stack.restart does after a crash (fault tests, bench/chaos.py): the same data dir and ports."""
    server = start_milvus_standalone(tmp_path / "data", tmp_path / "logs")
    try:
        cfg = MilvusConfig(uri=server.address, collection_prefix="restart")
        vectors = np.random.default_rng(2).standard_normal((100, 8)).astype(np.float32)
        client = vector_store.connect(cfg)
        name = vector_store.write_version(client, cfg, "xdm", 1, [f"i{j}" for j in range(100)], vectors)
        client.close()
        # a SIGTERM, not a kill: a killed server's query node session stays in its etcd until its lease
        # expires, and the restarted server loads no collection before that (seen: the test took 46 s, not 31 s)
        server.stop()
        # its connections' ports are still in TIME_WAIT: a trial bind without SO_REUSEADDR fails on them
        server = start_milvus_standalone(tmp_path / "data", tmp_path / "logs", ports=server.ports)
        client = vector_store.connect(cfg)
        try:
            best = vector_store.search(client, name, vectors[:1], 1, timeout_s=60)
        finally:
            client.close()
        assert best[0][0][0] == f"i{int(np.argmax(vectors @ vectors[0]))}"  # FLAT: exact
    finally:
        server.kill()  # its data dir is thrown away: nothing to stop gracefully for
        server.stop()
