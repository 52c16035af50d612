"""The worker's counters as Prometheus metrics, read from the live `Counters` at scrape time.

A collector over the one `Counters` record (instead of parallel prometheus Counter objects) keeps a
single source of truth: the log line, the metrics and the tests all read the same numbers. Beside it the
worker exports what its mirrors and their supervisor count themselves: records skipped as bad
(xdm_bad_records_total{reader}) and background task failures and health (xdm/supervision.py).
"""

from __future__ import annotations

from dataclasses import fields
from typing import Callable, Iterator

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from stream.app import Counters
from stream.mirror import BAD_RECORDS
from stream.broker_loss import LOSSES
from xdm.supervision import TASK_FAILURES, TASK_HEALTHY

PREFIX = "xdm_stream_"
HELP = {
    "events": "Records consumed from the clicks and impressions topics",
    "applied": "Events applied to a user's windows",
    "duplicates": "Redelivered events (an event id already applied), changed nothing",
    "too_late": "Events older than the user's watermark (newest event time - windows.lateness_ms), dropped",
    "unknown_items": "Events whose item was not in the catalogue yet (kept with unknown side info)",
    "dead_letters": "Records sent to the dead-letter topic",
    "samples": "Training samples emitted",
    "batches": "Batches processed",
    "state_writes": "User states written to the windows table",
    "forced_releases": "Records released before the other topic caught up in event time",
    "abandoned": "Held records let go unacknowledged at a rebalance (read again from the committed offset)",
    "expired_users": "Users idle past stream.user_retention_ms (event time) deleted from the windows table, tombstoned",
}


class CountersCollector:
    """Exposes every numeric field of `Counters`, dead letters by reason code, and live gauges."""

    def __init__(self, counters: Counters, gauges: dict[str, tuple[str, Callable[[], float]]] | None = None) -> None:
        self.counters = counters
        self.gauges = gauges or {}  # name -> (help, read)

    def collect(self) -> Iterator[Metric]:
        for f in fields(self.counters):
            value = getattr(self.counters, f.name)
            if isinstance(value, int):
                yield CounterMetricFamily(PREFIX + f.name, HELP.get(f.name, f.name), value=value)
        by_reason = CounterMetricFamily(PREFIX + "dead_letters_by_reason", "Dead letters by reason code",
                                        labels=["reason"])
        for reason, count in sorted(self.counters.dead_letter_reasons.items()):
            by_reason.add_metric([reason], count)
        yield by_reason
        for name, (text, read) in self.gauges.items():
            yield GaugeMetricFamily(PREFIX + name, text, value=read())


def metrics_registry(collector: CountersCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(collector)
    registry.register(LOSSES)  # the worker's mirrors and changelog recovery report broker data loss
    for own_metric in (BAD_RECORDS, TASK_FAILURES, TASK_HEALTHY):  # counted by the mirrors and their supervisor
        registry.register(own_metric)
    return registry


def serve_metrics(collector: CountersCollector, port: int, host: str = "127.0.0.1") -> None:
    """Serve /metrics on host:port from a background thread (port 0: do nothing)."""
    if port:
        start_http_server(port, addr=host, registry=metrics_registry(collector))
