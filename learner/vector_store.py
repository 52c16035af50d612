"""Item vectors in Milvus: one collection per published version, an alias per arm, nothing half-written.

A version's collection is filled, flushed, indexed, loaded and counted before anyone is told about it, so
a server searching the collection named in a version announcement always sees every row of that version
and only that version. The same code runs against Milvus Lite (a server process) and a real Milvus.
"""

from __future__ import annotations

import logging
import time
from typing import Sequence

import numpy as np
from pymilvus import DataType, MilvusClient

from xdm.client_security import milvus_client_kwargs
from xdm.config import MilvusConfig
from xdm.errors import ConfigError, ServiceError

log = logging.getLogger(__name__)
ID_FIELD = "item_id"
VECTOR_FIELD = "vector"
INSERT_CHUNK = 5000
CONNECT_RETRY_S = 0.5  # pause between connect attempts
GRPC_NEVER_MS = 2**31 - 1  # gRPC reads INT_MAX milliseconds as "never"


def collection_name(cfg: MilvusConfig, arm: str, version: int) -> str:
    return f"{cfg.collection_prefix}_{arm}_v{version}"


def alias_name(cfg: MilvusConfig, arm: str) -> str:
    return f"{cfg.collection_prefix}_{arm}"


def connect(cfg: MilvusConfig, timeout_s: float = 10.0, retry: bool = True) -> MilvusClient:
    """A client; with `retry`, a connect that fails at once is tried again until timeout_s is spent.

    pymilvus shares one gRPC channel per address in a process; when the server resets it (seen: a GOAWAY
    "too_many_pings" from Milvus Lite while another client of the process was busy), a connect in that
    instant fails immediately although the server is up. An unreachable server still ends in
    ServiceError once timeout_s is spent, each retry logged. A request path passes retry=False: it
    should fail fast and leave the retry to its caller.
    """
    deadline = time.monotonic() + timeout_s
    security = milvus_client_kwargs(cfg)  # token and TLS, read first: a missing file is no network error to retry
    while True:
        try:
            return MilvusClient(cfg.uri, timeout=max(deadline - time.monotonic(), CONNECT_RETRY_S),
                                grpc_options=grpc_options(cfg), **security)
        except Exception as exc:  # pymilvus raises several types for an unreachable server
            if not retry or time.monotonic() + CONNECT_RETRY_S >= deadline:
                raise ServiceError(f"cannot reach Milvus at {cfg.uri}: {exc}") from exc
            log.warning("Milvus connect failed; retrying", extra={"uri": cfg.uri, "error": repr(exc)})
            time.sleep(CONNECT_RETRY_S)


def grpc_options(cfg: MilvusConfig) -> dict[str, int | bool]:
    """Channel options for milvus.keepalive_s. pymilvus shares one channel per address in a process and
    the first client's options hold for all, so every client of this project is made by `connect`."""
    if cfg.keepalive_s < 0:
        raise ConfigError(f"milvus.keepalive_s must be at least 0, got {cfg.keepalive_s}")
    if cfg.keepalive_s == 0:
        return {"grpc.keepalive_time_ms": GRPC_NEVER_MS, "grpc.keepalive_permit_without_calls": False}
    return {"grpc.keepalive_time_ms": int(cfg.keepalive_s * 1000)}


def write_version(client: MilvusClient, cfg: MilvusConfig, arm: str, version: int, item_ids: Sequence[str],
                  vectors: np.ndarray) -> str:
    """Create and fully load the collection of one version; returns its name. Idempotent on retry."""
    if len(item_ids) != len(vectors):
        raise ValueError(f"{len(item_ids)} ids but {len(vectors)} vectors")
    name = collection_name(cfg, arm, version)
    if client.has_collection(name):
        client.drop_collection(name)  # a leftover of a publish that died before its announcement
    client.create_collection(name, schema=_schema(vectors.shape[1]), index_params=_index(client, cfg),
                             consistency_level="Strong")
    for start in range(0, len(item_ids), INSERT_CHUNK):
        rows = [{ID_FIELD: item_ids[i], VECTOR_FIELD: vectors[i].tolist()}
                for i in range(start, min(start + INSERT_CHUNK, len(item_ids)))]
        client.insert(name, rows)
    client.flush(name)
    _compact(client, name)
    client.load_collection(name)
    count = _count(client, name)
    if count != len(item_ids):
        raise ServiceError(f"collection {name} holds {count} rows after loading {len(item_ids)}")
    return name


def point_alias(client: MilvusClient, cfg: MilvusConfig, arm: str, collection: str) -> None:
    alias = alias_name(cfg, arm)
    if alias in client.list_aliases().get("aliases", []):
        client.alter_alias(collection, alias)
    else:
        client.create_alias(collection, alias)


def drop_versions_before(client: MilvusClient, cfg: MilvusConfig, arm: str, keep_from: int) -> list[str]:
    prefix = f"{cfg.collection_prefix}_{arm}_v"
    dropped = []
    for name in client.list_collections():
        if name.startswith(prefix) and name[len(prefix):].isdigit() and int(name[len(prefix):]) < keep_from:
            client.drop_collection(name)
            dropped.append(name)
    return dropped


def search(client: MilvusClient, collection: str, vectors: np.ndarray, limit: int, timeout_s: float) -> list[list[tuple[str, float]]]:
    """Max inner product search; one list of (item id, score) per query vector."""
    hits = client.search(collection, data=[v.tolist() for v in vectors], limit=limit, output_fields=[ID_FIELD],
                         search_params={"metric_type": "IP"}, anns_field=VECTOR_FIELD, timeout=timeout_s)
    return [[(h["entity"][ID_FIELD] if "entity" in h else h["id"], float(h["distance"])) for h in row] for row in hits]


def read_all(client: MilvusClient, collection: str, batch: int = 10_000) -> tuple[list[str], np.ndarray]:
    """Every (item id, vector) of a collection, in pages."""
    iterator = client.query_iterator(collection, batch_size=batch, filter="", output_fields=[ID_FIELD, VECTOR_FIELD])
    ids: list[str] = []
    rows: list[list[float]] = []
    try:
        while page := iterator.next():
            ids.extend(r[ID_FIELD] for r in page)
            rows.extend(r[VECTOR_FIELD] for r in page)
    finally:
        iterator.close()
    return ids, np.asarray(rows, dtype=np.float32)


def _schema(dim: int):
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field(ID_FIELD, DataType.VARCHAR, is_primary=True, max_length=256)
    schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=dim)
    return schema


def _index(client: MilvusClient, cfg: MilvusConfig):
    params = client.prepare_index_params()
    extra = {"M": 16, "efConstruction": 200} if cfg.index_type == "HNSW" else {}
    params.add_index(field_name=VECTOR_FIELD, index_type=cfg.index_type, metric_type="IP", params=extra)
    return params


def _compact(client: MilvusClient, name: str, timeout_s: float = 60.0) -> None:
    """Merge the inserted segments: searches over many small segments cost far more (STACK.md)."""
    job = client.compact(name)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = str(client.get_compaction_state(job)).lower()
        if "completed" in state or "undefined" in state:
            return
        time.sleep(0.05)
    log.warning("compaction still running; the version is published uncompacted", extra={"collection": name})


def _count(client: MilvusClient, name: str) -> int:
    rows = client.query(name, filter="", output_fields=["count(*)"], consistency_level="Strong")
    return int(rows[0]["count(*)"])
