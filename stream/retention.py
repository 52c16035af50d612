"""Users idle past `stream.user_retention_ms` leave the windows table, with a tombstone on its changelog so
that the serving replicas (stream/mirror.py: a None value deletes the key) and any rebuild drop them too.

Idle is judged in event time, on the table's own data: a partition's clock is the newest event time of any
of its users, and a user whose newest event is more than the retention older than that is idle. Event time
rather than the wall clock: a replay of an old log (all of whose events are "old") keeps the users the live
run kept, and a worker that was down for a week does not drop everyone on its return. A user who comes back
after being dropped starts with empty windows, as a new user does.

The sweep reads each active partition's rows (their headers only: stream.state_codec.state_max_ts), yields
to the event loop as it goes, and gives up at any rebalance (the next sweep starts over). It deletes under
the updater's batch lock, re-checking each user there: tombstones first, acknowledged, then the local rows,
so a crash in between leaves a row the next sweep deletes again, never a user the serving replicas keep
while the worker has forgotten them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Hashable, Iterable, TypeVar

import mode
from faust.stores.rocksdb import Store as RocksDBStore

from stream.app import StreamApp
from stream.state_codec import StateFormatError, state_max_ts
from stream.topics import changelog_topic
from stream.updater import WindowsUpdater
from xdm.errors import ConfigError
from xdm.supervision import SupervisedTask, Supervisor

log = logging.getLogger(__name__)
K = TypeVar("K", bound=Hashable)
TASK_NAME = "retention-sweep"
YIELD_EVERY = 1000  # rows read between two yields to the event loop (heartbeats and rounds go on)
DELETE_CHUNK = 500  # users deleted under one hold of the batch lock


def idle_users(newest_event_ms: Iterable[tuple[K, int]], retention_ms: int) -> list[tuple[K, int]]:
    """(user, newest event time) of the users whose newest event is more than retention_ms older than the
    newest event of them all; none when retention_ms is 0 (kept forever)."""
    rows = list(newest_event_ms)
    if retention_ms <= 0 or not rows:
        return []
    horizon = max(ts for _, ts in rows) - retention_ms
    return [(user, ts) for user, ts in rows if ts < horizon]


class RetentionSweep:
    """Deletes the idle users of the windows-table partitions this worker holds (see the module doc)."""

    def __init__(self, sa: StreamApp, updater: WindowsUpdater) -> None:
        if not isinstance(sa.windows.data, RocksDBStore):
            raise ConfigError(f"stream.user_retention_ms needs the rocksdb:// table store, not {sa.cfg.stream.store!r}")
        self.sa = sa
        self.updater = updater
        self.retention_ms = sa.cfg.stream.user_retention_ms

    async def sweep(self) -> int:
        """One pass over every active partition; returns how many users it deleted."""
        generation = self.sa.app.rebalancing_count
        deleted = 0
        for partition in self._active_partitions():
            rows = await self._newest_events(partition, generation)
            if rows is None:
                break
            idle = idle_users(rows, self.retention_ms)
            for start in range(0, len(idle), DELETE_CHUNK):
                deleted += await self._delete(partition, idle[start:start + DELETE_CHUNK], generation)
        if deleted:
            log.info("users idle past the retention deleted", extra={"users": deleted})
        return deleted

    async def _newest_events(self, partition: int, generation: int) -> list[tuple[bytes, int]] | None:
        """(user key, newest event time) of every readable row of the partition; None if a rebalance began."""
        rows: list[tuple[bytes, int]] = []
        db = self._rows_of(partition)
        if db is None:
            return rows
        for n, (key, raw) in enumerate(self._store._visible_items(db), 1):
            newest = _newest_event(raw)
            if newest is not None:  # a row this worker cannot read (a newer format) is not its to judge
                rows.append((key, newest))
            if n % YIELD_EVERY == 0:
                await asyncio.sleep(0)
                if self._rebalanced_since(generation):
                    return None
        return rows

    async def _delete(self, partition: int, idle: list[tuple[bytes, int]], generation: int) -> int:
        table = self.sa.windows
        async with self.updater.paused() as may_change:
            db = self._rows_of(partition)
            if not may_change or self._rebalanced_since(generation) or db is None:
                return 0
            # A user whose newest event moved since the scan came back: kept.
            keys = [key for key, newest in idle if _newest_event(db.get(key)) == newest]
            await asyncio.gather(*(table.send_changelog(partition, key, None, value_serializer="raw") for key in keys))
            for key in keys:
                db.delete(key)
        self.sa.counters.expired_users += len(keys)
        return len(keys)

    @property
    def _store(self) -> RocksDBStore:
        return self.sa.windows.data

    def _active_partitions(self) -> list[int]:
        topic = changelog_topic(self.sa.cfg)
        return sorted(tp.partition for tp in self.sa.app.assignor.assigned_actives() if tp.topic == topic)

    def _rows_of(self, partition: int) -> Any:
        # Faust keeps one RocksDB per partition but lists a table's rows only across all of them, and a
        # tombstone must go to the row's own changelog partition: its per-partition handles are the way.
        return self._store._dbs.get(partition)

    def _rebalanced_since(self, generation: int) -> bool:
        app = self.sa.app
        return app.rebalancing or app.rebalancing_count != generation


class RetentionService(mode.Service):
    """Runs the sweep every `stream.retention_sweep_s` under a Supervisor: a failed sweep is logged, counted
    in xdm_background_task_failures_total{task="retention-sweep"} and the loop restarted."""

    def __init__(self, sweep: RetentionSweep, interval_s: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if interval_s <= 0:
            raise ConfigError(f"stream.retention_sweep_s is {interval_s}; it must be > 0 s")
        self.sweep = sweep
        self.interval_s = interval_s
        self._task: SupervisedTask | None = None

    async def on_start(self) -> None:
        self._task = Supervisor().start(TASK_NAME, self._run)

    async def on_stop(self) -> None:
        if self._task is not None:
            await self._task.stop()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.sweep.sweep()
            if self._task is not None:
                self._task.progressed()


def _newest_event(raw: bytes | None) -> int | None:
    if raw is None:
        return None
    try:
        return state_max_ts(raw)
    except StateFormatError:
        return None
