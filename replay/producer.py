"""`xdm produce`: replay a log in the plain format into the broker, in event-time order.

The catalogue and profiles go first (the workers join events against them), then events keyed by user
id to the clicks or impressions topic. `speed` is a multiple of real time; 0 sends as fast as the broker
accepts. The producer waits for every acknowledgement (acks=all, flush at the end), so nothing is lost
silently: a failed send raises.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from kafka import KafkaProducer

from stream.wire import encode_event, encode_item, encode_profile
from xdm.client_security import kafka_client_kwargs
from xdm.config import KafkaConfig
from xdm.log_format import read_events, read_items, read_users
from xdm.progress import progress_bar
from xdm.records import Event


@dataclass(frozen=True)
class ProduceReport:
    items: int
    users: int
    events: int
    seconds: float

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


def make_producer(kafka: KafkaConfig) -> KafkaProducer:
    return KafkaProducer(**kafka_client_kwargs(kafka, "kafka-python"), acks="all", linger_ms=5, batch_size=256 * 1024,
                         max_in_flight_requests_per_connection=5)


def produce_catalogue(producer: KafkaProducer, kafka: KafkaConfig, log_dir: Path) -> tuple[int, int]:
    items = read_items(log_dir)
    for item in items.values():
        producer.send(kafka.items_topic, key=item.item_id.encode(), value=encode_item(item))
    users = read_users(log_dir)
    for profile in users.values():
        producer.send(kafka.users_topic, key=profile.user_id.encode(), value=encode_profile(profile))
    producer.flush()
    return len(items), len(users)


def produce_events(producer: KafkaProducer, kafka: KafkaConfig, events: Iterable[Event], speed: float = 0.0,
                   progress: bool = True, total: int | None = None, limit: int | None = None) -> int:
    """Send events keyed by user id; with speed > 0, pace them against their event-time gaps."""
    sent = 0
    first_ts: int | None = None
    started = time.monotonic()
    bar = progress_bar(total=total, desc="producing events", unit="ev", show=progress, smoothing=0.1)
    futures = []
    for event in events:
        if limit is not None and sent >= limit:
            break
        if speed > 0:
            first_ts = event.ts_ms if first_ts is None else first_ts
            due = (event.ts_ms - first_ts) / 1000 / speed
            delay = due - (time.monotonic() - started)
            if delay > 0:
                time.sleep(delay)
        topic = kafka.clicks_topic if event.kind == "click" else kafka.impressions_topic
        futures.append(producer.send(topic, key=event.user_id.encode(), value=encode_event(event)))
        sent += 1
        if len(futures) >= 5000:
            _settle(producer, futures)
        bar.update(1)
    _settle(producer, futures)
    bar.close()
    return sent


def produce_log(kafka: KafkaConfig, log_dir: str | Path, speed: float = 0.0, progress: bool = True,
                limit: int | None = None) -> ProduceReport:
    log_dir = Path(log_dir)
    started = time.monotonic()
    producer = make_producer(kafka)
    try:
        n_items, n_users = produce_catalogue(producer, kafka, log_dir)
        n_events = produce_events(producer, kafka, read_events(log_dir), speed, progress, limit=limit)
    finally:
        producer.close(timeout=10)
    return ProduceReport(n_items, n_users, n_events, time.monotonic() - started)


def _settle(producer: KafkaProducer, futures: list) -> None:
    """Flush and surface the first failed send (a lost event must not pass silently)."""
    producer.flush()
    for future in futures:
        future.get(timeout=30)
    futures.clear()
