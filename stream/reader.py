"""The read path serving uses: a replica of the windows table built from its changelog topic.

Workers and servers may run on different machines, so the server never opens the workers' RocksDB files;
it mirrors the `windows` table's changelog (every table write is also a changelog record) and decodes a
user's state only when that user is asked for. Decoding and snapshotting a Table-1-sized state takes
a few hundred µs, so the windows of recently read users are kept, and recomputed when their next
changelog record arrives (off the request path).

The cache keeps the windows as stored rows (`WindowRows`: tuples of ints and strings), not as Behavior
records (serving reads the rows; `windows` builds the records, ~40 µs at Table-1 lengths): the garbage
collector stops tracking plain tuples, while ~110 records a user stay tracked, and every full collection
walks them all while the whole server waits (bench/gc_pause.py).

A changelog record this code cannot read (a newer state format during a rolling upgrade, a corrupt
row) is refused by the mirror and counted; the user keeps the windows of their last good record. Only
the format byte is checked on arrival (a full decode of every record would cost the replica its
speed); a user whose stored state still fails to decode on read is answered as one without windows.

A sharded server (serving.shards > 1, xdm/shards.py) mirrors only its shard's changelog partitions, so it
holds 1/shards of the users; which of them are its own, `owner_elsewhere` says from the user id alone.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

from stream.mirror import BAD_RECORDS, TopicMirror
from stream.partitions import PartitionShare
from stream.state_codec import FORMAT_VERSION, StateFormatError, UnsupportedStateVersion, decode_state
from stream.topics import changelog_topic
from stream.windows import NO_EVENTS, WindowRows, Windows, snapshot_rows, windows_of
from xdm.config import Config
from xdm.shards import ShardLayout, shard_layout
from xdm.stream_rules import WindowRules
from xdm.supervision import Supervisor

log = logging.getLogger(__name__)


class WindowsReader:
    """Current windows of any user, as the workers last wrote them."""

    def __init__(self, cfg: Config, cache_users: int = 10_000, supervisor: Supervisor | None = None) -> None:
        self.rules: WindowRules = cfg.windows
        self.mirror: TopicMirror[bytes] = TopicMirror(cfg.kafka, changelog_topic(cfg), readable_state,
                                                      name="windows", read_committed=cfg.kafka.exactly_once,
                                                      supervisor=supervisor)
        self.cache_users = cache_users
        self._cache: OrderedDict[str, tuple[bytes, WindowRows | None]] = OrderedDict()  # user -> (record, rows)
        self.mirror.on_update = self._on_record
        # what a lost changelog means for this replica (stream/broker_loss.py); the server also turns NOT_SERVING
        self.mirror.read_positions.consequence = ("windows must be rebuilt: wipe the workers' stream.data_dir, "
                                                  "replay the events, then restart the servers")
        self.shard = cfg.serving.shard
        self.layout = served_layout(cfg)
        if self.layout is not None:
            self.mirror.share = PartitionShare(tuple(self.layout.partitions_of(self.shard)), self.layout.partitions)

    def owner_elsewhere(self, user_id: str) -> int | None:
        """The shard that holds `user_id` when it is not this replica's (None: this one, or unsharded)."""
        if self.layout is None:
            return None
        owner = self.layout.shard_of_user(user_id)
        return None if owner == self.shard else owner

    async def start(self, wait_s: float = 60.0) -> None:
        await self.mirror.start()
        await self.mirror.wait_caught_up(wait_s)

    async def stop(self) -> None:
        await self.mirror.stop()

    def windows(self, user_id: str) -> Windows | None:
        """The user's windows at their latest event time (event time, so replays of old logs work)."""
        rows = self.rows(user_id)
        return None if rows is None else windows_of(rows)

    def rows(self, user_id: str) -> WindowRows | None:
        """`windows` as stored rows, what the cache holds: a read of a user read before is a dict lookup."""
        raw = self.mirror.get(user_id)
        if raw is None:
            return None
        cached = self._cache.get(user_id)
        if cached is not None and cached[0] is raw:  # every changelog record is a new bytes object
            self._cache.move_to_end(user_id)
            return cached[1]
        try:
            return self._compute(user_id, raw)
        except StateFormatError as exc:  # one corrupt row: this user is answered without windows
            BAD_RECORDS.labels(self.mirror.name).inc()
            log.warning("stored windows undecodable, answering without them: %s", exc, extra={"user": user_id})
            self._remember(user_id, raw, None)
            return None

    def _compute(self, user_id: str, raw: bytes) -> WindowRows | None:
        state = decode_state(raw)
        rows = None if state.max_ts == NO_EVENTS else snapshot_rows(state, state.max_ts, self.rules)
        self._remember(user_id, raw, rows)
        return rows

    def _remember(self, user_id: str, raw: bytes, rows: WindowRows | None) -> None:
        if self.cache_users > 0:
            self._cache[user_id] = (raw, rows)
            self._cache.move_to_end(user_id)
            if len(self._cache) > self.cache_users:
                self._cache.popitem(last=False)

    def _on_record(self, user_id: str, raw: bytes | None) -> None:
        """A changelog record arrived: refresh a user that is being read, forget a deleted one. A record
        that does not decode raises: the mirror refuses it and the user keeps their last good windows."""
        if user_id not in self._cache:
            return
        if raw is None:
            del self._cache[user_id]
        else:
            self._compute(user_id, raw)


def served_layout(cfg: Config) -> ShardLayout | None:
    """The shard layout a sharded server serves (checked against its config), None for one unsharded replica."""
    if cfg.serving.shards == 1 and not cfg.serving.shard_partitions:
        return None
    return shard_layout(cfg)


def readable_state(raw: bytes) -> bytes:
    """A changelog record as the mirror keeps it, if its format is one this code reads (else it raises)."""
    if not raw or raw[0] != FORMAT_VERSION:
        raise UnsupportedStateVersion(f"state format {raw[0] if raw else 'none'}, this code reads {FORMAT_VERSION}")
    return raw
