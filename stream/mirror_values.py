"""Where a TopicMirror keeps its values: a dict in memory (the default), or RocksDB on the worker's disk.

A mirror needs four things of its store (get, set, pop, len), and a dict already is one. Every worker
mirrors the whole catalogue, and a dict of decoded Items costs 430-530 B per item (~13 GB at 30 M items,
docs/capacity.md §3), so the catalogue lives in `DiskValues`: RocksDB holds each item's encoded record
on disk, and only a bounded cache of decoded values stays in memory. A cache hit is one dict lookup; a
miss is one RocksDB read and one protobuf decode, ~6 µs of CPU against the ~70-100 µs a worker spends on
an event (bench/catalogue_memory.py measures both, and the worker's events/s, against a dict).

The RocksDB copy is a cache of the topic, not state of its own: it is wiped when opened and refilled by
the mirror, which always reads its topic from the beginning. Nothing in it is ever recovered, so it is
written without a write-ahead log, and deleting its folder (under stream.data_dir) loses nothing.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Callable, Generic, Protocol, TypeVar

from rocksdict import BlockBasedOptions, Cache, DBCompressionType, Options, Rdict, WriteOptions

log = logging.getLogger(__name__)
V = TypeVar("V")

# RocksDB's own memory, fixed whatever the catalogue's size: memtables fill and flush to disk, the block
# cache keeps recently read blocks. Index and bloom-filter blocks of the files stay outside that cache
# (~2.5 B per key together), so a lookup of an unknown item is answered without a disk read.
WRITE_BUFFER_BYTES = 8 << 20
WRITE_BUFFERS = 2
BLOCK_CACHE_BYTES = 8 << 20
BLOOM_BITS_PER_KEY = 10


class MirrorValues(Protocol[V]):
    """What a TopicMirror needs of its store; a plain dict is one."""

    def get(self, key: str) -> V | None: ...

    def __setitem__(self, key: str, value: V) -> None: ...

    def pop(self, key: str, default: None = None) -> V | None: ...

    def __len__(self) -> int: ...


class DiskValues(Generic[V]):
    """key -> value in RocksDB at `path` (values stored as `encode(value)`), with up to `cache_size` recently
    used values kept decoded in memory. Opened on first use, wiped as it opens: the owner refills it."""

    def __init__(self, path: Path, encode: Callable[[V], bytes], decode: Callable[[bytes], V],
                 cache_size: int) -> None:
        self.path = Path(path)
        self.encode = encode
        self.decode = decode
        # Two generations of decoded values, each up to half the cache: a full `recent` becomes `older` and
        # the previous `older` is dropped, so a value survives while it is used. Close to LRU, and a hit is
        # one dict lookup: the updater makes one per event (an OrderedDict's reordering cost ~4x that).
        self.cache_size = cache_size
        self._recent: dict[str, V] = {}
        self._older: dict[str, V] = {}
        self._db: Rdict | None = None
        self._count = 0

    def get(self, key: str) -> V | None:
        value = self._recent.get(key)
        if value is not None:
            return value
        value = self._older.get(key)
        if value is None:
            raw = self._rdict().get(key.encode())
            if raw is None:
                return None
            value = self.decode(raw)
        self._remember(key, value)
        return value

    def __setitem__(self, key: str, value: V) -> None:
        db, raw_key = self._rdict(), key.encode()
        if not self._contains(db, key, raw_key):
            self._count += 1
        db[raw_key] = self.encode(value)
        # Cache the new value only if the old one was cached: a catch-up over the whole topic must not push
        # the items events use out of the cache.
        if self._forget(key):
            self._remember(key, value)

    def pop(self, key: str, default: None = None) -> V | None:
        value = self.get(key)
        if value is None:
            return default
        self._rdict().delete(key.encode())
        self._forget(key)
        self._count -= 1
        return value

    def __len__(self) -> int:
        return self._count

    def close(self) -> None:
        """Close RocksDB (its folder stays until the next open wipes it); a later use opens it afresh."""
        if self._db is not None:
            self._db.close()
        self._db = None
        self._recent, self._older = {}, {}
        self._count = 0

    def _remember(self, key: str, value: V) -> None:
        if self.cache_size <= 0:
            return
        if len(self._recent) >= max(1, self.cache_size // 2):
            self._older, self._recent = self._recent, {}
        self._recent[key] = value

    def _forget(self, key: str) -> bool:
        """Drop a key from the cache; True if it was there."""
        return (self._recent.pop(key, None) is not None) | (self._older.pop(key, None) is not None)

    def _contains(self, db: Rdict, key: str, raw_key: bytes) -> bool:
        if key in self._recent or key in self._older:
            return True
        # the bloom filters answer most absent keys (every key of a first read of the topic) without a read
        return db.key_may_exist(raw_key) and db.get(raw_key) is not None

    def _rdict(self) -> Rdict:
        if self._db is None:
            self._db = self._open()
        return self._db

    def _open(self) -> Rdict:
        if self.path.exists():
            # DestroyDB takes RocksDB's lock first: a folder another live process has open is not wiped
            Rdict.destroy(str(self.path))
            shutil.rmtree(self.path, ignore_errors=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = Rdict(str(self.path), _options())
        writes = WriteOptions()
        writes.disable_wal = True  # a cache of the topic: after a crash it is wiped, never replayed
        db.set_write_options(writes)
        log.info("mirror values on disk", extra={"path": str(self.path)})
        return db


def _options() -> Options:
    options = Options(raw_mode=True)  # bytes in, bytes out: nothing read back is unpickled
    options.create_if_missing(True)
    options.set_write_buffer_size(WRITE_BUFFER_BYTES)
    # A lookup that misses the block cache reads a block from the page cache; uncompressed it costs ~4.7 µs
    # of CPU instead of ~6 µs (1 M items), for ~100 B an item on disk instead of ~35
    options.set_compression_type(DBCompressionType.none())
    options.set_max_write_buffer_number(WRITE_BUFFERS)
    table = BlockBasedOptions()
    table.set_block_cache(Cache(BLOCK_CACHE_BYTES))
    table.set_bloom_filter(BLOOM_BITS_PER_KEY, False)
    options.set_block_based_table_factory(table)
    return options
