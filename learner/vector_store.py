"""Item vectors in Milvus: one collection per published version, an alias per arm, nothing half-written.

A version's collection is filled, flushed, indexed, loaded and counted before anyone is told about it, so
a server searching the collection named in a version announcement always sees every row of that version
and only that version. A collection is never rewritten: a version number that has a collection is taken
for good (write_version refuses it), whether that version was announced or its publish died halfway.
Every call carries milvus.call_timeout_s, so a Milvus that stops answering fails the caller instead of
hanging it. The same code runs against Milvus Lite (a server process) and a real Milvus.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Sequence

import numpy as np
from pymilvus import DataType, MilvusClient, MilvusException

from xdm.client_security import milvus_client_kwargs
from xdm.config import MilvusConfig
from xdm.errors import ConfigError, ServiceError, XdmError

log = logging.getLogger(__name__)
ID_FIELD = "item_id"
VECTOR_FIELD = "vector"
INSERT_CHUNK = 5000
CONNECT_RETRY_S = 0.5  # pause between connect attempts
GRPC_NEVER_MS = 2**31 - 1  # gRPC reads INT_MAX milliseconds as "never"
# Milvus's error code for a collection not loaded. Milvus Lite comes back from a restart with every collection
# released (a real Milvus loads them again itself): readers load what they read, or no version published
# before the restart could be served again (tests/integration/test_serving_faults.py).
NOT_LOADED = 101


class VersionExists(XdmError):
    """A version number that already has a collection: publish under a new number, never over it."""


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
    """Create and fully load the collection of one version; returns its name.

    Raises VersionExists when the version already has a collection: it may be one servers are answering
    from (a learner that resumed from an older checkpoint used to drop and refill it under their feet), so
    a retry takes a new number (learner/publish.py next_version) instead.
    """
    if len(item_ids) != len(vectors):
        raise ValueError(f"{len(item_ids)} ids but {len(vectors)} vectors")
    name = collection_name(cfg, arm, version)
    timeout = cfg.call_timeout_s
    if client.has_collection(name, timeout=timeout):
        raise VersionExists(f"collection {name} exists: version {version} of arm {arm} was published or attempted "
                            f"before and is never rewritten; publish under a higher version number")
    client.create_collection(name, schema=_schema(vectors.shape[1]), index_params=_index(client, cfg),
                             consistency_level="Strong", timeout=timeout)
    for start in range(0, len(item_ids), INSERT_CHUNK):
        rows = [{ID_FIELD: item_ids[i], VECTOR_FIELD: vectors[i].tolist()}
                for i in range(start, min(start + INSERT_CHUNK, len(item_ids)))]
        client.insert(name, rows, timeout=timeout)
    client.flush(name, timeout=timeout)
    _compact(client, name, timeout)
    client.load_collection(name, timeout=timeout)
    count = _count(client, name, timeout)
    if count != len(item_ids):
        raise ServiceError(f"collection {name} holds {count} rows after loading {len(item_ids)}")
    return name


def point_alias(client: MilvusClient, cfg: MilvusConfig, arm: str, collection: str) -> None:
    alias = alias_name(cfg, arm)
    timeout = cfg.call_timeout_s
    if alias in client.list_aliases(timeout=timeout).get("aliases", []):
        client.alter_alias(collection, alias, timeout=timeout)
    else:
        client.create_alias(collection, alias, timeout=timeout)


def versions(client: MilvusClient, cfg: MilvusConfig, arm: str) -> list[int]:
    """Version numbers of the arm's collections, announced or left by a publish that died: all taken."""
    prefix = f"{cfg.collection_prefix}_{arm}_v"
    names = client.list_collections(timeout=cfg.call_timeout_s)
    return sorted(int(n[len(prefix):]) for n in names if n.startswith(prefix) and n[len(prefix):].isdigit())


def drop_versions_before(client: MilvusClient, cfg: MilvusConfig, arm: str, keep_from: int) -> list[str]:
    dropped = []
    for version in versions(client, cfg, arm):
        if version < keep_from:
            name = collection_name(cfg, arm, version)
            client.drop_collection(name, timeout=cfg.call_timeout_s)
            dropped.append(name)
    return dropped


def search(client: MilvusClient, collection: str, vectors: np.ndarray, limit: int, timeout_s: float) -> list[list[tuple[str, float]]]:
    """Max inner product search; one list of (item id, score) per query vector."""
    def run() -> list:
        return client.search(collection, data=[v.tolist() for v in vectors], limit=limit, output_fields=[ID_FIELD],
                             search_params={"metric_type": "IP"}, anns_field=VECTOR_FIELD, timeout=timeout_s)

    try:
        hits = run()
    except MilvusException as exc:
        if exc.code != NOT_LOADED:
            raise
        client.load_collection(collection, timeout=timeout_s)  # see NOT_LOADED
        hits = run()
    return [[(h["entity"][ID_FIELD] if "entity" in h else h["id"], float(h["distance"])) for h in row] for row in hits]


def read_all(client: MilvusClient, collection: str, batch: int = 10_000, *,
             timeout_s: float) -> tuple[list[str], np.ndarray]:
    """Every (item id, vector) of a collection, in pages; each page's call fails after timeout_s."""
    client.load_collection(collection, timeout=timeout_s)  # see NOT_LOADED; at once when it is loaded
    iterator = _open_iterator(client, collection, batch, timeout_s)
    ids: list[str] = []
    rows: list[list[float]] = []
    try:
        while page := iterator.next():
            ids.extend(r[ID_FIELD] for r in page)
            rows.extend(r[VECTOR_FIELD] for r in page)
    finally:
        iterator.close()
    return ids, np.asarray(rows, dtype=np.float32)


def _open_iterator(client: MilvusClient, collection: str, batch: int, timeout_s: float):
    """client.query_iterator, given up after timeout_s. pymilvus 3.0's QueryIterator sends its first
    request (describe_collection) without the timeout it is handed, and that request waits forever on a
    server that stopped answering; so it is opened on a thread of its own, which ends when the server
    answers or the connection drops. Its later page requests do carry the timeout."""
    opened: list = []
    done = threading.Event()

    def open_it() -> None:
        try:
            opened.append(client.query_iterator(collection, batch_size=batch, filter="",
                                                output_fields=[ID_FIELD, VECTOR_FIELD], timeout=timeout_s))
        except Exception as exc:  # raised on the caller's thread below
            opened.append(exc)
        finally:
            done.set()

    threading.Thread(target=open_it, name="milvus-open-iterator", daemon=True).start()
    if not done.wait(timeout_s):
        raise ServiceError(f"Milvus did not open a query iterator on {collection} within {timeout_s} s")
    if isinstance(opened[0], Exception):
        raise opened[0]
    return opened[0]


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


def _compact(client: MilvusClient, name: str, call_timeout_s: float, wait_s: float = 60.0) -> None:
    """Merge the inserted segments: searches over many small segments cost far more (STACK.md)."""
    job = client.compact(name, timeout=call_timeout_s)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        state = str(client.get_compaction_state(job, timeout=call_timeout_s)).lower()
        if "completed" in state or "undefined" in state:
            return
        time.sleep(0.05)
    log.warning("compaction still running; the version is published uncompacted", extra={"collection": name})


def _count(client: MilvusClient, name: str, timeout_s: float) -> int:
    rows = client.query(name, filter="", output_fields=["count(*)"], consistency_level="Strong", timeout=timeout_s)
    return int(rows[0]["count(*)"])
