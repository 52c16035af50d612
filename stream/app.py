"""The stream worker's Faust app: its topics, its windows table and the catalogue it joins against.

`make_app(cfg)` declares everything in one place a reader can scan; agents.py holds the agent loops.
Every topic is created beforehand with its partition count (infra.topics); the app never auto-creates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import faust

from stream.mirror import TopicMirror
from stream.topics import WINDOWS_TABLE
from stream.wire import decode_item, decode_profile
from xdm.config import Config
from xdm.records import Item, UserProfile

@dataclass
class Counters:
    """What a worker has done since it started (exported as metrics and logged)."""

    events: int = 0
    applied: int = 0
    duplicates: int = 0
    too_late: int = 0
    unknown_items: int = 0
    dead_letters: int = 0
    samples: int = 0
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)


@dataclass
class StreamApp:
    cfg: Config
    app: faust.App
    events: faust.TopicT  # clicks and impressions, one channel: both keyed by user, co-partitioned
    samples: faust.TopicT
    dead_letters: faust.TopicT
    windows: faust.Table  # user id -> encoded UserState (stream.state_codec)
    catalogue: TopicMirror[Item]
    profiles: TopicMirror[UserProfile]
    counters: Counters


def make_app(cfg: Config) -> StreamApp:
    k = cfg.kafka
    app = faust.App(
        cfg.stream.app_id,
        broker=_broker_url(k.bootstrap),
        store=cfg.stream.store,
        datadir=str(Path(cfg.stream.data_dir)),
        topic_partitions=k.partitions,
        topic_replication_factor=k.replication,
        topic_allow_declare=False,
        broker_session_timeout=k.session_timeout_ms / 1000,
        broker_heartbeat_interval=k.heartbeat_ms / 1000,
        broker_rebalance_timeout=k.rebalance_timeout_ms / 1000,
        processing_guarantee="at_least_once",  # tansu has no transactions; updates are idempotent instead
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        key_serializer="raw",  # every key and value is bytes we encode ourselves (protobuf, state codec)
        value_serializer="raw",
        table_cleanup_interval=3600.0,
    )
    raw = {"key_serializer": "raw", "value_serializer": "raw"}
    events = app.topic(k.clicks_topic, k.impressions_topic, key_type=bytes, value_type=bytes, **raw)
    samples = app.topic(k.samples_topic, key_type=bytes, value_type=bytes, partitions=k.partitions, **raw)
    dead_letters = app.topic(k.dlq_topic, key_type=bytes, value_type=bytes, partitions=1, **raw)
    windows = app.Table(WINDOWS_TABLE, default=None, key_type=bytes, value_type=bytes, partitions=k.partitions)
    catalogue = TopicMirror(k.bootstrap, k.items_topic, decode_item, name="catalogue")
    profiles = TopicMirror(k.bootstrap, k.users_topic, decode_profile, name="profiles")
    return StreamApp(cfg, app, events, samples, dead_letters, windows, catalogue, profiles, Counters())


def _broker_url(bootstrap: str) -> str:
    return ";".join(f"kafka://{host}" for host in bootstrap.split(","))
