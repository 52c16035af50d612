"""The worker's batch path: records in, aligned in event time, applied per user, states out, acks last.

For one batch the effects happen in this order, so that a crash at any point loses nothing:
1. dead letters for records that are not valid events or that the window rules refuse;
2. the samples the batch completed, their acknowledgements awaited;
3. the user states the batch changed, written to the table (RocksDB at once, the changelog record
   through the producer);
4. the batch's records acknowledged, after which Faust may commit their offsets (it flushes the
   producer first, so every changelog record and dead letter of the batch is stored by then).
A crash re-reads every record not yet committed. Before 3 the stored states are the old ones and the
events apply again (a sample may be sent twice; it carries a stable id). After 3 the events are
duplicates and the state is written once more, restoring a changelog record the crash may have lost
(stream.batch). Samples are awaited before the states are written because a state that already
holds a settled anchor will never emit its sample again.

Records are held in `stream.align.EventAligner` until the other event topic has caught up in event
time; on a rebalance the held records are let go without acknowledgement (Faust reads them again from
the committed offset) and the state cache is dropped (recovery may change the table under it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from dataclasses import dataclass
from typing import Any, AsyncIterator, Iterable, Iterator, Sequence

import faust
from faust.streams import _current_event
from faust.types import TP

from stream.align import EventAligner
from stream.app import StreamApp
from stream.batch import Incoming, StateCache, UserUpdate, apply_batch
from stream.dlq import DeadLetterSink
from stream.samples import Sample
from stream.state_codec import decode_state, encode_state
from stream.windows import UserState
from stream.wire import MalformedEvent, SampleTimes, decode_event, encode_sample
from xdm.config import Config
from xdm.records import Event, Item

log = logging.getLogger(__name__)
TICK_S = 0.05  # with no new records, held ones are checked for release this often (s)


@dataclass(slots=True)
class Pending:
    """A consumed record waiting for alignment: its event, or the reason it is a dead letter."""

    event: faust.EventT
    record: Event | None
    reason: str = ""


class WindowsUpdater:
    """Owns the aligner, the state cache and the batch path of one worker process."""

    def __init__(self, sa: StreamApp) -> None:
        self.sa = sa
        s = sa.cfg.stream
        self.aligner: EventAligner[Pending] = EventAligner(
            (sa.cfg.kafka.clicks_topic, sa.cfg.kafka.impressions_topic), idle_s=s.align_idle_ms / 1000,
            max_hold_s=s.align_max_hold_ms / 1000, max_held=s.align_max_held)
        self.cache = StateCache(s.state_cache_users)
        self.dlq = DeadLetterSink(sa.dead_letters, sa.counters, s.max_event_bytes)
        self.stream: faust.StreamT | None = None  # the agent's stream, which acknowledges records
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()  # records came in
        self._progress = asyncio.Event()  # a round started: room for more records
        self._waiting = 0  # records added since the last round started
        self._failure: BaseException | None = None
        self._revoking = False
        sa.app.rebalance_hooks.on_revoked.append(self.on_revoked)
        sa.app.rebalance_hooks.on_seeked.append(self.on_seeked)

    async def take(self, events: Sequence[faust.EventT]) -> None:
        """A batch from the agent's stream: queue it for alignment and wake the processing loop.

        Returns at once unless twice `stream.batch_max` records wait for the next round: Faust keeps
        delivering while a round is processed, and a worker that falls behind stops taking more.
        """
        self._raise_if_failed()
        self.sa.counters.events += len(events)
        if self._revoking:
            self._abandon(events)
            return
        now, wall_ms = time.monotonic(), int(time.time() * 1000)
        for event in events:
            pending = self._pending(event, wall_ms)
            msg = event.message
            self.aligner.add(msg.topic, msg.partition, msg.offset,
                             pending.record.ts_ms if pending.record else None, pending, now)
        self._waiting += len(events)
        self._wake.set()
        while self._waiting > 2 * self.sa.cfg.stream.batch_max and not self._revoking:
            self._progress.clear()
            await self._progress.wait()
            self._raise_if_failed()

    async def run(self) -> None:
        """The processing loop: a round whenever records wait (see `_next_round`)."""
        try:
            while True:
                await self._next_round()
                await self.release()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            # Nothing of the failed round was acknowledged; a fresh process rereads it from the last
            # commit, so the worker stops here rather than carry on with a half-applied round.
            self._failure = exc
            self._progress.set()
            log.exception("windows processing failed; stopping the worker")
            await self.sa.app.crash(exc)
            raise

    async def _next_round(self) -> None:
        """Wait for records, then let the round fill for up to `stream.batch_within_ms`.

        Rounds are what make the worker fast: one state load and write per user per round, and a
        feed's users come in bursts, so a round of 5 000 records writes a few dozen states. Waiting
        costs no throughput, as Faust keeps delivering meanwhile; it costs at most that much freshness.
        With no records at all a round still runs every TICK_S, for records held by the aligner.
        """
        s = self.sa.cfg.stream
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=TICK_S)
        except asyncio.TimeoutError:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + s.batch_within_ms / 1000
        while self._waiting < s.batch_max and not self._revoking:
            self._wake.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=remaining)
            except asyncio.TimeoutError:
                break
        self._wake.clear()

    async def release(self) -> None:
        """One round: take what the aligner lets go, in batches of at most `stream.batch_max` records."""
        async with self._lock:
            self._waiting = 0
            self._progress.set()
            if self._revoking or self.stream is None:
                return
            ready = self.aligner.release(time.monotonic(), self._offsets)
            self.sa.counters.forced_releases = self.aligner.forced
            size = self.sa.cfg.stream.batch_max
            start = 0
            try:
                for start in range(0, len(ready), size):
                    await self._process(ready[start:start + size])
            except BaseException:
                # Nothing from `start` on was acknowledged: let it go (it is reread after a restart),
                # so that stopping does not wait for it; the cached states may be ahead of the table.
                self._revoking = True
                self.cache.clear()
                self._abandon(p.event for p in ready[start:])
                self._abandon(p.event for p in self.aligner.abandon())
                raise

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise RuntimeError("the windows processing loop failed; see the error above") from self._failure

    def on_revoked(self) -> None:
        self._revoking = True
        self.cache.clear()
        self._abandon(p.event for p in self.aligner.abandon())
        self._progress.set()  # a take() waiting for room returns (and abandons what it brings)

    def on_seeked(self) -> None:
        self._revoking = False
        self.cache.clear()
        self._abandon(p.event for p in self.aligner.abandon())

    @contextlib.asynccontextmanager
    async def paused(self) -> AsyncIterator[bool]:
        """Hold rounds off while the caller changes the table outside the batch path (stream/retention.py).
        Yields False during a rebalance (change nothing then); the state cache is dropped afterwards, as it
        may hold a row the caller deleted."""
        async with self._lock:
            try:
                yield not self._revoking
            finally:
                self.cache.clear()

    @property
    def held(self) -> int:
        return self.aligner.held

    # ---- the batch

    async def _process(self, ready: list[Pending]) -> None:
        counters = self.sa.counters
        letters: list[tuple[Any, str]] = [(p.event, p.reason) for p in ready if p.record is None]
        result = apply_batch(self._incoming(ready), self._load, self.sa.cfg.windows, self.sa.cfg.samples)
        letters.extend(result.rejected)
        for event, reason in letters:
            await self.dlq.send(event, reason)
        await self._send_samples(result.samples)
        counters.state_writes += self._write(result.updates)
        counters.applied += result.applied
        counters.duplicates += result.duplicates
        counters.too_late += result.too_late
        counters.samples += len(result.samples)
        counters.batches += 1
        await self._ack(p.event for p in ready)

    def _incoming(self, ready: list[Pending]) -> Iterator[Incoming]:
        catalogue = self.sa.catalogue.values  # the mirror's store, not the mirror: this runs once per event
        for p in ready:
            record = p.record
            if record is None:
                continue
            item = catalogue.get(record.item_id)
            if item is None:
                self.sa.counters.unknown_items += 1
                item = Item(record.item_id)  # kept, with unknown side info (later events carry it once known)
            yield Incoming(record.user_id.encode(), record, item, p.event)

    def _load(self, key: bytes, event: faust.EventT) -> UserState:
        state = self.cache.get(key)
        if state is None:
            with acting_for(event):
                raw = self.sa.windows.get(key)
            state = decode_state(raw) if raw else UserState()
            self.cache.put(key, state)
        return state

    def _write(self, updates: list[UserUpdate]) -> int:
        written = 0
        for update in updates:
            if update.write:
                with acting_for(update.handle):
                    self.sa.windows[update.key] = encode_state(update.state)
                written += 1
        return written

    async def _send_samples(self, samples: list[tuple[Sample, faust.EventT]]) -> None:
        if not samples:
            return
        emitted_ms = int(time.time() * 1000)
        sent = []
        for sample, event in samples:
            profile = self.sa.profiles.get(sample.user_id)
            if profile is not None and not sample.profile:
                sample = sample.with_profile(profile.fields)
            times = SampleTimes(source_ms=int((event.message.timestamp or 0) * 1000), emitted_ms=emitted_ms)
            sent.append(await self.sa.samples.send(key=sample.user_id.encode(), value=encode_sample(sample, times)))
        await asyncio.gather(*sent)

    async def _ack(self, events: Iterable[faust.EventT]) -> None:
        assert self.stream is not None, "the agent sets WindowsUpdater.stream before the first batch"
        for event in events:
            await self.stream.ack(event)

    def _abandon(self, events: Iterable[faust.EventT]) -> None:
        """Let records go without acknowledging them: Faust stops waiting for them, the offset stays."""
        n = 0
        for event in events:
            # Faust's rebalance waits until every record handed to an agent is acked, and drops a record
            # from that wait once `message.acked` is set; its offset is only committed through
            # consumer.ack, which is not called, so the record is read again after the seek.
            event.message.acked = True
            n += 1
        self.sa.counters.abandoned += n

    # ---- helpers

    def _pending(self, event: faust.EventT, wall_ms: int) -> Pending:
        cfg = self.sa.cfg
        try:
            record = decode_event(event.value, max_bytes=cfg.stream.max_event_bytes, now_ms=wall_ms,
                                  max_future_ms=cfg.stream.max_future_ms)
            check_topic_kind(event.message.topic, record.kind, cfg)
        except MalformedEvent as exc:
            return Pending(event, None, str(exc))
        return Pending(event, record)

    def _offsets(self, topic: str, partition: int) -> tuple[int | None, int | None]:
        """(offset reading began at, high watermark) of a source, as the consumer knows them now."""
        consumer = self.sa.app.consumer
        tp = TP(topic, partition)
        try:
            end = consumer.highwater(tp)
        except Exception:  # not assigned (any more): unknown
            end = None
        start = consumer.start_offset(tp) if hasattr(consumer, "start_offset") else None
        return start, end


def check_topic_kind(topic: str, kind: str, cfg: Config) -> None:
    """A click on the impressions topic (or the reverse) is a producer bug: refuse it."""
    expected = "click" if topic == cfg.kafka.clicks_topic else "impression"
    if kind != expected:
        raise MalformedEvent(f"{kind} event on the {expected}s topic {topic}")


@contextlib.contextmanager
def acting_for(event: faust.EventT) -> Iterator[None]:
    """Make `event` Faust's current event: tables pick the store and changelog partition from it.

    A batch mixes partitions and is processed outside Faust's per-event iteration, so each user's
    read and write names one of that user's own records (all of a user's records share a partition).
    """
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)
