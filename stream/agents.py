"""The worker's agents: thin `async for` loops that call the pure window and sample rules.

Delivery is at-least-once (the embedded broker has no transactions): an event may come twice after a
crash, and the window rules drop a repeated event id, so a redelivery changes nothing.
"""

from __future__ import annotations

import logging
import time

import faust
import mode

from stream.app import StreamApp, make_app
from stream.dlq import DeadLetterSink
from stream.samples import step
from stream.state_codec import decode_state, encode_state
from stream.windows import Outcome, UserState
from stream.wire import MalformedEvent, SampleTimes, decode_event, encode_sample
from xdm.config import Config
from xdm.records import Item

log = logging.getLogger(__name__)


def build_worker_app(cfg: Config) -> StreamApp:
    """The Faust app with its agents, timers and start-up tasks attached."""
    sa = make_app(cfg)
    dlq = DeadLetterSink(sa.dead_letters, sa.counters)

    @sa.app.agent(sa.events, name="windows-updater")
    async def update_windows(stream: faust.StreamT) -> None:
        await sa.catalogue.wait_caught_up(timeout_s=120)
        await sa.profiles.wait_caught_up(timeout_s=120)
        async for event in stream.events():
            await handle_event(sa, dlq, event)

    @sa.app.timer(interval=10.0)
    async def report() -> None:
        log.info("worker counters", extra=vars(sa.counters))

    return sa


async def handle_event(sa: StreamApp, dlq: DeadLetterSink, event: faust.EventT) -> None:
    cfg = sa.cfg
    sa.counters.events += 1
    try:
        record = decode_event(event.value, max_bytes=cfg.stream.max_event_bytes, now_ms=int(time.time() * 1000),
                              max_future_ms=cfg.stream.max_future_ms)
        _check_topic_kind(event.message.topic, record.kind, cfg)
    except MalformedEvent as exc:
        await dlq.send(event, str(exc))
        return
    item = sa.catalogue.get(record.item_id)
    if item is None:
        sa.counters.unknown_items += 1
        item = Item(record.item_id)  # kept with unknown side info; documented in README
    key = record.user_id.encode()
    stored = sa.windows.get(key)
    state = decode_state(stored) if stored else UserState()
    result = step(state, record, item, cfg.windows, cfg.samples)
    if result.outcome is Outcome.DUPLICATE:
        sa.counters.duplicates += 1
        return
    if result.outcome is Outcome.TOO_LATE:
        sa.counters.too_late += 1
        return
    sa.counters.applied += 1
    sa.windows[key] = encode_state(state)
    times = SampleTimes(source_ms=int(event.message.timestamp or 0), emitted_ms=int(time.time() * 1000))
    profile = sa.profiles.get(record.user_id)
    for sample in result.samples:
        if profile is not None and not sample.profile:
            sample = sample.with_profile(profile.fields)
        await sa.samples.send(key=key, value=encode_sample(sample, times))
        sa.counters.samples += 1


def _check_topic_kind(topic: str, kind: str, cfg: Config) -> None:
    expected = "click" if topic == cfg.kafka.clicks_topic else "impression"
    if kind != expected:
        raise MalformedEvent(f"{kind} event on the {expected}s topic {topic}")


class JoinSources(mode.Service):
    """Starts and stops the catalogue and profile mirrors with the worker (agents wait for them)."""

    def __init__(self, sa: StreamApp, **kwargs) -> None:
        super().__init__(**kwargs)
        self.sa = sa

    async def on_start(self) -> None:
        await self.sa.catalogue.start()
        await self.sa.profiles.start()

    async def on_stop(self) -> None:
        await self.sa.catalogue.stop()
        await self.sa.profiles.stop()


def run_worker(cfg: Config, loglevel: str = "INFO") -> None:
    """Run one worker process until SIGTERM / Ctrl-C."""
    sa = build_worker_app(cfg)
    worker = faust.Worker(sa.app, JoinSources(sa), loglevel=loglevel, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()


def make_default_app() -> faust.App:
    """For `faust -A` style tooling; production starts through run_worker."""
    from xdm.config import load_config

    return build_worker_app(load_config()).app
