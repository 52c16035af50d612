"""Faust's app, consumer and per-record helpers with what this worker needs, installed by `XdmFaustApp`.

- Recovery reads changelogs to their true end, and fetches wait at most `stream.fetch_max_wait_ms`
  (stream.recovery.ProbingConsumerThread).
- `RebalanceHooks` run when partitions are revoked and after the seek to committed offsets, and
  `start_offset` tells where reading began (the aligner's "has this topic anything for me" test).
- The seek to committed offsets after a rebalance also sends a stream partition that has no committed
  offset back to its beginning (aiokafka leaves it where the fetcher was; issue #9).
- A leaner delivery loop. Faust hands every record to the streams through `wait_first(callback,
  suspend_flow.wait())`, which creates about four asyncio tasks per record so that a delivery blocked
  on flow control can be abandoned when a rebalance suspends the flow. Measured here that race costs
  ~30 µs of CPU per record, a third of the worker's budget. The delivery callback only blocks when the
  flow is suspended, the producer buffer is over its limit, or the conductor's lock is held; when none
  holds it runs to completion without suspending, so awaiting it directly is the same as the race. The
  loop below does that, and falls back to Faust's race otherwise. The rest of the loop (gaps, commits
  every n acks, read offsets) is Faust's `Consumer._drain_messages` of faust-streaming 0.15.3.
- `CountingMonitor` and `RawBytesSchema` drop per-record work the worker does not use: Faust's
  monitor keeps per-record timings for its web view (disabled here), and its schema looks up the
  "raw" codec for every key and value of topics that carry bytes as they are.
- `set_stream_yield_every`: Faust's compiled stream iterator awaits `asyncio.sleep(0)` before every
  record, one event-loop turn (an epoll call and a round of callbacks) per record. Yielding once per
  64 records instead cut the worker's CPU per record by 16 % here (13.8 k against 11.3 k records/s
  on one core); the longest another task then waits is 64 records' work, about 3 ms.

The worker's own counters (stream.metrics) replace what the monitor would report.
"""

from __future__ import annotations

import asyncio
from time import monotonic
from typing import Any, AsyncIterator, Callable, Mapping, cast

import faust
from faust.sensors.monitor import Monitor
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from mode import Service

from stream.recovery import ProbingConsumerThread, RebalanceHooks, hooks_of


class HookedConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return ProbingConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        hooks_of(self.app).revoked()
        await super().on_partitions_revoked(revoked)

    async def perform_seek(self) -> None:
        await super().perform_seek()
        hooks_of(self.app).seeked()

    async def seek_to_committed(self) -> Mapping[TP, int]:
        """Seek to the committed offsets, and stream partitions with none back to their beginning.

        aiokafka seeks only partitions that have a committed offset and leaves the others at their
        current position. Faust seeks back after every rebalance because records fetched before it
        are dropped unprocessed (cut-off deliveries, cleared stream buffers, records the worker held
        and let go); a partition this worker keeps but never committed stayed where the fetcher had
        got to, so those records were never read again, and the next commit passed over them.
        """
        committed = await super().seek_to_committed()
        if self.app.conf.consumer_auto_offset_reset == "earliest":
            never = [tp for tp, offset in committed.items()
                     if not offset and self.app.topics.acks_enabled_for(tp.topic) and not self._is_changelog_tp(tp)]
            if never:
                await self._thread.seek_to_beginning(*never)
        return committed

    def start_offset(self, tp: TP) -> int | None:
        """The committed offset this consumer sought to when `tp` was assigned (None: none committed)."""
        return self._committed_offset.get(tp)

    def _delivery_check(self) -> Callable[[], bool]:
        """A cheap test that the delivery callback cannot block now (see the module doc)."""
        app = self.app
        buffer = app.producer.buffer
        # ProducerBuffer.size reads a setting per call, which costs more than the rest of the test
        size = buffer.pending.qsize if not app.conf.producer_threaded else (lambda: buffer.size)
        limit = buffer.max_messages
        flow_active, suspended = app.flow_control.is_active, self.suspend_flow.is_set
        locked = app.topics._tp_to_callback_lock.locked
        return lambda: flow_active() and not suspended() and size() <= limit and not locked()

    async def _drain_messages(self, fetcher: Service) -> None:  # noqa: C901 - Faust's loop, kept in one piece
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = cast(Service, self)._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        set_flag, unset_flag = self.diag.set_flag, self.diag.unset_flag
        fetching = CONSUMER_FETCHING
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        cannot_block = self._delivery_check()
        since_yield = 0
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(fetching)
                records = cast(AsyncIterator, getmany(timeout=1.0))
                await self.sleep(0)
                if self.should_stop:
                    continue
                async for tp, message in records:
                    since_yield += 1
                    if since_yield > 100:
                        await asyncio.sleep(0)
                        since_yield = 0
                    offset = message.offset
                    read = get_read_offset(tp)
                    if read is not None and offset < read:
                        continue  # already delivered (Faust drops it the same way)
                    if offset - (read or 0) > 1 and read and acks_enabled_for(message.topic):
                        await self._add_gap(tp, read + 1, offset)
                    if commit_every is not None and self._n_acked >= commit_every:
                        self._n_acked = 0
                        await self.commit()
                    if cannot_block():
                        await callback(message)
                    else:
                        await self.wait_first(callback(message), self.suspend_flow.wait())
                    set_read_offset(tp, offset)
                unset_flag(fetching)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise
        finally:
            unset_flag(fetching)


class CountingMonitor(Monitor):
    """Faust's monitor without its per-record bookkeeping (message and event timings, table ops)."""

    def on_message_in(self, tp: TP, offset: int, message: Any) -> None:
        pass

    def on_stream_event_in(self, tp: TP, offset: int, stream: Any, event: Any) -> None:
        # Faust's liveness probe reads this: without it every partition is reported as "not started
        # processing" (an ERROR with a traceback-like text) once stream_processing_timeout has passed.
        self.stream_inbound_time[tp] = monotonic()

    def on_stream_event_out(self, tp: TP, offset: int, stream: Any, event: Any, state: Any = None) -> None:
        pass

    def on_message_out(self, tp: TP, offset: int, message: Any) -> None:
        pass

    def on_table_get(self, table: Any, key: Any) -> None:
        pass

    def on_table_set(self, table: Any, key: Any, value: Any) -> None:
        pass

    def track_tp_end_offset(self, tp: TP, offset: int) -> None:
        pass


class RawBytesSchema(faust.Schema):
    """Keys and values stay the bytes they arrived as, without a codec lookup per record."""

    def compile(self, app: Any, **kwargs: Any) -> Callable:
        create_event = app.create_event

        async def decode(message: Any, *, propagate: bool = False) -> Any:
            return create_event(message.key, message.value, message.headers, message)

        return decode


class _Ready:
    """An awaitable that completes at once, without a turn of the event loop."""

    __slots__ = ()

    def __await__(self) -> Any:
        return iter(())


_READY = _Ready()


def set_stream_yield_every(n: int) -> bool:
    """Make Faust's compiled stream iterator yield to the loop once per `n` records (1: Faust's own).

    Process-wide, as Faust's iterator is. Returns False (and changes nothing) when Faust runs its
    pure-Python iterator or the compiled module no longer awaits `sleep` the way 0.15.3 does.
    """
    try:
        from faust._cython import streams as compiled
    except ImportError:
        return False
    original = getattr(compiled, "_xdm_original_sleep", getattr(compiled, "sleep", None))
    if original is not asyncio.sleep:
        return False
    compiled._xdm_original_sleep = original
    if n <= 1:
        compiled.sleep = original
        return True
    calls = 0

    def sleep_now_and_then(delay: float) -> Any:
        nonlocal calls
        calls += 1
        if calls >= n or delay:
            calls = 0
            return original(delay)
        return _READY

    compiled.sleep = sleep_now_and_then
    return True


class HookedTransport(faust_aiokafka.Transport):
    Consumer = HookedConsumer


class XdmFaustApp(faust.App):
    """faust.App on HookedTransport for kafka:// brokers, with `rebalance_hooks` for the worker."""

    def __init__(self, *args: Any, fetch_max_wait_ms: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rebalance_hooks = RebalanceHooks()
        self.xdm_fetch_max_wait_ms = fetch_max_wait_ms  # see ProbingConsumerThread

    async def on_stop(self) -> None:
        # Faust's stop waits for every record handed to an agent to be acknowledged; records held by
        # the worker are let go first (the next start reads them again from the committed offset).
        self.rebalance_hooks.revoked()
        await super().on_stop()

    def _new_transport(self) -> Any:
        if faust.transport.by_url(self.conf.broker_consumer[0]) is faust_aiokafka.Transport:
            return HookedTransport(self.conf.broker_consumer, self)
        return super()._new_transport()  # another driver: Faust's own behaviour
