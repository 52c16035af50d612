"""The worker's agents: thin loops that hand batches to the WindowsUpdater (stream/updater.py).

Delivery is at-least-once (the embedded broker has no transactions): a record may come twice after a
crash or a rebalance, and the window rules drop a repeated event id, so a redelivery changes nothing.
Records are taken without automatic acknowledgement (`noack_take`): the updater acknowledges a record
only once everything it caused is written, and may hold a record back to align the two event topics.
The agent only queues records; the updater's processing loop runs beside it, so Faust keeps
delivering while a round waits for the broker.
"""

from __future__ import annotations

import asyncio
import logging

import faust
import mode

from stream.app import StreamApp, make_app
from stream.metrics import CountersCollector, serve_metrics
from stream.retention import RetentionService, RetentionSweep
from stream.updater import WindowsUpdater
from xdm.config import Config

log = logging.getLogger(__name__)
MIRROR_WAIT_S = 120.0  # the catalogue and profiles must be read before events are joined against them
TAKE_MAX, TAKE_WITHIN_S = 500, 0.005  # hand-over from Faust to the updater; rounds are sized by the updater


def build_worker_app(cfg: Config) -> tuple[StreamApp, WindowsUpdater]:
    """The Faust app with its agent, timers and the updater they share."""
    sa = make_app(cfg)
    updater = WindowsUpdater(sa)

    @sa.app.agent(sa.events, name="windows-updater")
    async def update_windows(stream: faust.StreamT) -> None:
        await sa.catalogue.wait_caught_up(timeout_s=MIRROR_WAIT_S)
        await sa.profiles.wait_caught_up(timeout_s=MIRROR_WAIT_S)
        updater.stream = stream
        rounds = asyncio.ensure_future(updater.run())
        try:
            async for events in stream.noack_take(TAKE_MAX, within=TAKE_WITHIN_S):
                await updater.take(events)
        finally:
            rounds.cancel()

    @sa.app.timer(interval=cfg.stream.counters_log_s)
    async def report() -> None:
        log.info("worker counters: %s held=%d cached_states=%d", sa.counters.summary(), updater.held,
                 len(updater.cache))

    return sa, updater


def worker_collector(sa: StreamApp, updater: WindowsUpdater) -> CountersCollector:
    return CountersCollector(sa.counters, {
        "held_records": ("Records held for event-time alignment of the two event topics", lambda: updater.held),
        "cached_states": ("Decoded user states kept in memory", lambda: len(updater.cache)),
        "catalogue_items": ("Items in the worker's catalogue mirror", lambda: len(sa.catalogue.values)),
        "assigned_partitions": ("Event-topic partitions assigned to this worker",
                                lambda: assigned_event_partitions(sa)),
    })


def assigned_event_partitions(sa: StreamApp) -> int:
    topics = {sa.cfg.kafka.clicks_topic, sa.cfg.kafka.impressions_topic}
    try:
        return sum(1 for tp in sa.app.consumer.assignment() if tp.topic in topics)
    except Exception:  # consumer not started yet
        return 0


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
    """Run one worker process until SIGTERM / Ctrl-C; metrics on stream.metrics_port when set."""
    sa, updater = build_worker_app(cfg)
    serve_metrics(worker_collector(sa, updater), cfg.stream.metrics_port)
    services: list[mode.Service] = [JoinSources(sa)]
    if cfg.stream.user_retention_ms > 0:
        services.append(RetentionService(RetentionSweep(sa, updater), cfg.stream.retention_sweep_s))
    worker = faust.Worker(sa.app, *services, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()


def make_default_app() -> faust.App:
    """For `faust -A` style tooling; production starts through run_worker."""
    from xdm.config import load_config

    return build_worker_app(load_config())[0].app
