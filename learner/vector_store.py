"""Item vectors in Milvus: one collection per published version, an alias per arm, nothing half-written.

A version's collection is filled, flushed, indexed, loaded and counted before anyone is told about it, so
a server searching the collection named in a version announcement always sees every row of that version
and only that version. A version is full (every item's vector) or a delta on a full version, its base
(learner/vector_delta.py): the delta's collection holds the changed rows and tombstones, and its
`xdm.base` property names the base's collection. Every reader goes through read_all or search here,
which merge the two, so what a reader sees is the version's vectors whatever its layout; retention keeps
every base a kept delta needs. A collection is never rewritten: a version number that has a collection is taken
for good (write_version refuses it), whether that version was announced or its publish died halfway.
Every call carries milvus.call_timeout_s, so a Milvus that stops answering fails the caller instead of
hanging it. The same code runs against Milvus Lite (a server process) and a real Milvus.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from pymilvus import DataType, MilvusClient, MilvusException

from learner.vector_delta import Delta, merge, merge_hits
from xdm.client_security import milvus_client_kwargs
from xdm.config import MilvusConfig
from xdm.errors import ConfigError, ServiceError, XdmError

log = logging.getLogger(__name__)
ID_FIELD = "item_id"
VECTOR_FIELD = "vector"
REMOVED_FIELD = "removed"  # a delta version's tombstone: the base's item is not in this version
BASE_PROPERTY = "xdm.base"  # collection property of a delta version: its base version's collection
# Vector bytes per insert call (4 k rows at 64 dims). Milvus Lite turns every row into Python objects on
# its side and took ~1.4x longer per row in calls of 32 k rows than of 5 k (bench/publish_cost.py's notes).
INSERT_BYTES = 1 << 20
SEARCH_MAX_LIMIT = 16_384  # Milvus's largest top-k
CONNECT_RETRY_S = 0.5  # pause between connect attempts
GRPC_NEVER_MS = 2**31 - 1  # gRPC reads INT_MAX milliseconds as "never"
# Milvus's error code for a collection not loaded. Milvus Lite comes back from a restart with every collection
# released (a real Milvus loads them again itself): readers load what they read, or no version published
# before the restart could be served again (tests/integration/test_serving_faults.py).
NOT_LOADED = 101


class VersionExists(XdmError):
    """A version number that already has a collection: publish under a new number, never over it."""


def collection_name(cfg: MilvusConfig, arm: str, version: int) -> str:
    return f"{alias_name(cfg, arm)}_v{version}"


def alias_name(cfg: MilvusConfig, arm: str) -> str:
    return f"{cfg.collection_prefix}_{_arm_in_name(arm)}"


def _arm_in_name(arm: str) -> str:
    """The arm as Milvus names may hold it: a real Milvus takes letters, digits and underscores only
    (Milvus Lite takes more), and arms are often variants with a hyphen (`xdm-sasrec`), so "-" is "__"."""
    name = arm.replace("-", "__")
    if not name or not all(c.isascii() and (c.isalnum() or c == "_") for c in name):
        raise ConfigError(f"arm {arm!r} cannot name a Milvus collection: use letters, digits, '_' and '-' only")
    return name


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
    """Create and fully load the collection of one full version; returns its name.

    Raises VersionExists when the version already has a collection: it may be one servers are answering
    from (a learner that resumed from an older checkpoint used to drop and refill it under their feet), so
    a retry takes a new number (learner/publish.py next_version) instead.
    """
    if len(item_ids) != len(vectors):
        raise ValueError(f"{len(item_ids)} ids but {len(vectors)} vectors")
    name = collection_name(cfg, arm, version)
    _create(client, cfg, name, _schema(vectors.shape[1]), {})
    _insert_bulk(client, name, {ID_FIELD: list(item_ids)}, vectors, cfg.call_timeout_s)
    _seal(client, cfg, name, len(item_ids))
    return name


def write_delta(client: MilvusClient, cfg: MilvusConfig, arm: str, version: int, base: str, delta: Delta) -> str:
    """Create and fully load the collection of a delta version on `base` (a full version's collection):
    the delta's changed rows and a tombstone per removed item. Its `xdm.base` property names the base, set
    with the collection itself, so no reader ever sees the delta without knowing what it applies to."""
    name = collection_name(cfg, arm, version)
    if not client.has_collection(base, timeout=cfg.call_timeout_s):
        raise ServiceError(f"base collection {base} of delta version {version} is gone; publish a full version")
    dim = delta.vectors.shape[1]
    _create(client, cfg, name, _schema(dim, delta=True), {BASE_PROPERTY: base})
    tombstones = np.zeros((len(delta.removed), dim), dtype=np.float32)
    columns = {ID_FIELD: delta.ids + delta.removed,
               REMOVED_FIELD: [False] * len(delta.ids) + [True] * len(delta.removed)}
    _insert_bulk(client, name, columns, np.concatenate([delta.vectors, tombstones]), cfg.call_timeout_s)
    # no compaction: a delta is a few segments' worth, and waiting for a real Milvus to finish compacting
    # took ~10 s a delta (bench/publish_cost.py --milvus standalone), more than writing it
    _seal(client, cfg, name, delta.rows, compact=False)
    return name


def _create(client: MilvusClient, cfg: MilvusConfig, name: str, schema, properties: dict[str, str]) -> None:
    timeout = cfg.call_timeout_s
    if client.has_collection(name, timeout=timeout):
        raise VersionExists(f"collection {name} exists: that version was published or attempted before and is "
                            f"never rewritten; publish under a higher version number")
    client.create_collection(name, schema=schema, consistency_level="Strong", properties=properties, timeout=timeout)


def _insert_bulk(client: MilvusClient, name: str, columns: dict[str, list], vectors: np.ndarray,
                 timeout_s: float) -> None:
    """Insert in calls of about INSERT_BYTES, each chunk's vectors turned into lists by one tolist()."""
    chunk = max(1, INSERT_BYTES // max(1, vectors.shape[1] * 4))
    for start in range(0, len(vectors), chunk):
        stop = min(start + chunk, len(vectors))
        fields = {field: values[start:stop] for field, values in columns.items()}
        rows = [dict(zip(fields, values), **{VECTOR_FIELD: vector})
                for *values, vector in zip(*fields.values(), vectors[start:stop].tolist())]
        client.insert(name, rows, timeout=timeout_s)


def _seal(client: MilvusClient, cfg: MilvusConfig, name: str, rows: int, compact: bool = True) -> None:
    """One flush, compaction, then the index over the whole collection (built once, after the rows are
    in, not segment by segment as they arrive), load, and a count that must match."""
    timeout = cfg.call_timeout_s
    client.flush(name, timeout=timeout)
    if compact:
        _compact(client, name, timeout)
    client.create_index(name, _index(client, cfg), timeout=timeout)  # returns once built over every row
    client.load_collection(name, timeout=timeout)
    count = _count(client, name, timeout)
    if count != rows:
        raise ServiceError(f"collection {name} holds {count} rows after loading {rows}")


def point_alias(client: MilvusClient, cfg: MilvusConfig, arm: str, collection: str) -> None:
    alias = alias_name(cfg, arm)
    timeout = cfg.call_timeout_s
    if alias in client.list_aliases(timeout=timeout).get("aliases", []):
        client.alter_alias(collection, alias, timeout=timeout)
    else:
        client.create_alias(collection, alias, timeout=timeout)


def versions(client: MilvusClient, cfg: MilvusConfig, arm: str) -> list[int]:
    """Version numbers of the arm's collections, announced or left by a publish that died: all taken."""
    prefix = f"{alias_name(cfg, arm)}_v"
    names = client.list_collections(timeout=cfg.call_timeout_s)
    return sorted(int(n[len(prefix):]) for n in names if n.startswith(prefix) and n[len(prefix):].isdigit())


def drop_versions_before(client: MilvusClient, cfg: MilvusConfig, arm: str, keep_from: int) -> list[str]:
    """Drop the arm's versions numbered below keep_from, except a base that a kept delta applies to."""
    numbers = versions(client, cfg, arm)
    needed = {base_of(client, collection_name(cfg, arm, v), cfg.call_timeout_s) for v in numbers if v >= keep_from}
    dropped = []
    for version in numbers:
        name = collection_name(cfg, arm, version)
        if version < keep_from and name not in needed:
            client.drop_collection(name, timeout=cfg.call_timeout_s)
            dropped.append(name)
    return dropped


@dataclass(frozen=True)
class VersionView:
    """What a search of one version reads: its collection and, for a delta, its base and the ids the
    delta overrides (changed or removed), whose base rows a search must not return. Collections are never
    rewritten, so a view stays true for as long as its collection exists: a reader may keep it."""

    collection: str
    base: str | None = None
    overridden: frozenset[str] = frozenset()


def base_of(client: MilvusClient, collection: str, timeout_s: float) -> str | None:
    """The collection of the full version a delta version's collection applies to; None for a full one."""
    properties = client.describe_collection(collection, timeout=timeout_s).get("properties") or {}
    base = properties.get(BASE_PROPERTY)
    if base is None:
        return None
    stem, _, number = collection.rpartition("_v")
    base_stem, _, base_number = base.rpartition("_v")
    # the property is data in Milvus, not a name a reader trusts: only an earlier version of the same arm
    if base_stem != stem or not (number.isdigit() and base_number.isdigit()) or int(base_number) >= int(number):
        raise ServiceError(f"collection {collection} names {base[:120]!r} as its base, which is no earlier "
                           f"version of its arm")
    return base


def version_view(client: MilvusClient, collection: str, timeout_s: float, batch: int = 10_000) -> VersionView:
    base = base_of(client, collection, timeout_s)
    if base is None:
        return VersionView(collection)
    ids = _read_columns(client, collection, [ID_FIELD], batch, timeout_s)[ID_FIELD]
    return VersionView(collection, base, frozenset(ids))


def search(client: MilvusClient, collection: str, vectors: np.ndarray, limit: int, timeout_s: float,
           view: VersionView | None = None, ef: int = 0, nprobe: int = 0) -> list[list[tuple[str, float]]]:
    """Max inner product search of one version; one list of (item id, score) per query vector. A delta
    version searches its delta and its base and drops the base's hits the delta overrides. Pass the
    version's `view` when searching it often (it costs a describe, and for a delta a read of its ids).
    ef: an HNSW index's candidates per query (milvus.search_ef; raised to the limit); nprobe: the lists an
    IVF_FLAT index scans (milvus.search_nprobe); 0 = Milvus's own. Each index type ignores the other's."""
    knobs = {"ef": ef, "nprobe": nprobe}
    view = view or version_view(client, collection, timeout_s)
    if view.base is None:
        return _search(client, collection, vectors, limit, timeout_s, knobs=knobs)
    fresh = _search(client, collection, vectors, limit, timeout_s, f"{REMOVED_FIELD} == false", knobs=knobs)
    old = _search_base(client, view, vectors, limit, timeout_s, knobs)
    return [merge_hits(f, o, view.overridden, limit) for f, o in zip(fresh, old)]


def _search_base(client: MilvusClient, view: VersionView, vectors: np.ndarray, limit: int,
                 timeout_s: float, knobs: dict[str, int]) -> list[list[tuple[str, float]]]:
    """The base's hits, enough of them that `limit` survive the overridden ones (or the base ran out): a
    base row past the ones returned scores no higher than any of them, so the merge stays exact."""
    ask = min(limit + min(len(view.overridden), limit), SEARCH_MAX_LIMIT)
    while True:
        rows = _search(client, view.base, vectors, ask, timeout_s, knobs=knobs)
        short = any(len(row) == ask and sum(item not in view.overridden for item, _ in row) < limit for row in rows)
        if not short:
            return rows
        if ask >= SEARCH_MAX_LIMIT:
            log.warning("delta overrides more of its base's best hits than one search returns; answer may be "
                        "short", extra={"collection": view.collection, "limit": limit})
            return rows
        ask = min(2 * ask, SEARCH_MAX_LIMIT)


def _search(client: MilvusClient, collection: str, vectors: np.ndarray, limit: int, timeout_s: float,
            filter: str = "", knobs: dict[str, int] | None = None) -> list[list[tuple[str, float]]]:
    # Eventual consistency: a version is never written after it was counted under Strong consistency, so
    # nothing is missed; Strong (the collection's level) makes a real Milvus wait for its next time tick,
    # ~200 ms a search (seen; 2 ms with Eventually).
    knobs = {name: value for name, value in (knobs or {}).items() if value}
    if "ef" in knobs:
        knobs["ef"] = max(knobs["ef"], limit)  # HNSW refuses an ef below k
    params = {"metric_type": "IP", **({"params": knobs} if knobs else {})}

    def run() -> list:
        return client.search(collection, data=[v.tolist() for v in vectors], limit=limit, filter=filter,
                             output_fields=[ID_FIELD], search_params=params, anns_field=VECTOR_FIELD,
                             consistency_level="Eventually", timeout=timeout_s)

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
    """Every (item id, vector) of the version whose collection this is, in pages; each page's call fails
    after timeout_s. A delta version's rows are merged onto its base's."""
    base = base_of(client, collection, timeout_s)
    if base is None:
        return _read_vectors(client, collection, batch, timeout_s)
    delta = _read_columns(client, collection, [ID_FIELD, VECTOR_FIELD, REMOVED_FIELD], batch, timeout_s)
    removed = np.asarray(delta[REMOVED_FIELD], dtype=bool)
    ids = [item for item, gone in zip(delta[ID_FIELD], removed) if not gone]
    vectors = np.asarray([v for v, gone in zip(delta[VECTOR_FIELD], removed) if not gone], dtype=np.float32)
    gone_ids = [item for item, gone in zip(delta[ID_FIELD], removed) if gone]
    base_ids, base_vectors = _read_vectors(client, base, batch, timeout_s)
    return merge(base_ids, base_vectors, ids, vectors.reshape(len(ids), base_vectors.shape[1]), gone_ids)


def _read_vectors(client: MilvusClient, collection: str, batch: int, timeout_s: float) -> tuple[list[str], np.ndarray]:
    columns = _read_columns(client, collection, [ID_FIELD, VECTOR_FIELD], batch, timeout_s)
    return columns[ID_FIELD], np.asarray(columns[VECTOR_FIELD], dtype=np.float32)


def _read_columns(client: MilvusClient, collection: str, fields: list[str], batch: int,
                  timeout_s: float) -> dict[str, list]:
    client.load_collection(collection, timeout=timeout_s)  # see NOT_LOADED; at once when it is loaded
    iterator = _open_iterator(client, collection, fields, batch, timeout_s)
    columns: dict[str, list] = {field: [] for field in fields}
    try:
        while page := iterator.next():
            for field, values in columns.items():
                values.extend(r[field] for r in page)
    finally:
        iterator.close()
    return columns


def _open_iterator(client: MilvusClient, collection: str, fields: list[str], batch: int, timeout_s: float):
    """client.query_iterator, given up after timeout_s. pymilvus 3.0's QueryIterator sends its first
    request (describe_collection) without the timeout it is handed, and that request waits forever on a
    server that stopped answering; so it is opened on a thread of its own, which ends when the server
    answers or the connection drops. Its later page requests do carry the timeout."""
    opened: list = []
    done = threading.Event()

    def open_it() -> None:
        try:
            opened.append(client.query_iterator(collection, batch_size=batch, filter="",
                                                output_fields=fields, timeout=timeout_s))
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


def _schema(dim: int, delta: bool = False):
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field(ID_FIELD, DataType.VARCHAR, is_primary=True, max_length=256)
    schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=dim)
    if delta:
        schema.add_field(REMOVED_FIELD, DataType.BOOL)
    return schema


# Build parameters per milvus.index_type (xdm/config.py INDEX_TYPES).
INDEX_PARAMS = {"FLAT": {}, "HNSW": {"M": 16, "efConstruction": 200}, "IVF_FLAT": {"nlist": 1024}}


def _index(client: MilvusClient, cfg: MilvusConfig):
    params = client.prepare_index_params()
    params.add_index(field_name=VECTOR_FIELD, index_type=cfg.index_type, metric_type="IP",
                     params=INDEX_PARAMS[cfg.index_type])
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
