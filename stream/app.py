"""The stream worker's Faust app: its topics, its windows table and the catalogue it joins against.

`make_app(cfg)` declares everything in one place a reader can scan; agents.py holds the agent loops.
Every topic is created beforehand with its partition count (infra.topics); the app never auto-creates.
The app class is stream.recovery's XdmFaustApp: Faust's app with true changelog end offsets (the
embedded broker under-reports them) and rebalance hooks the worker uses to let held records go.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import faust
from faust.types import TP

from stream.dlq import DeadLetterSink
from stream.mirror import TopicMirror
from stream.mirror_values import DiskValues, MirrorValues
from stream.mirror_letters import MirrorDeadLetters
from stream.consumer import CountingMonitor, RawBytesSchema, XdmFaustApp, set_stream_yield_every
from stream.topics import WINDOWS_TABLE
from stream.wire import decode_item, decode_profile, encode_item
from xdm.client_security import kafka_client_kwargs
from xdm.config import Config
from xdm.records import Item, UserProfile

@dataclass
class Counters:
    """What a worker has done since it started (exported as metrics by stream.metrics, and logged)."""

    events: int = 0  # records consumed from the event topics
    applied: int = 0  # events that changed a user's windows
    duplicates: int = 0  # redeliveries of an event id already applied
    too_late: int = 0  # events older than the user's watermark: dropped
    unknown_items: int = 0  # events whose item is not in the catalogue (yet)
    dead_letters: int = 0  # records sent to the dead-letter topic
    samples: int = 0  # training samples emitted
    batches: int = 0  # batches processed
    state_writes: int = 0  # user states written to the table
    forced_releases: int = 0  # records released before the other topic caught up in event time
    abandoned: int = 0  # held records let go unacknowledged at a rebalance (read again later)
    expired_users: int = 0  # users idle past stream.user_retention_ms deleted from the table (stream/retention.py)
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)  # reason code -> letters

    def summary(self) -> str:
        """One log-friendly line: name=value for every counter."""
        parts = [f"{name}={value}" for name, value in vars(self).items() if isinstance(value, int)]
        parts += [f"dead_letter.{code}={n}" for code, n in sorted(self.dead_letter_reasons.items())]
        return " ".join(parts)


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
    mirror_letters: MirrorDeadLetters  # dead letters for bad records of the catalogue and profile topics


def make_app(cfg: Config) -> StreamApp:
    k = cfg.kafka
    set_stream_yield_every(cfg.stream.yield_every)
    app = XdmFaustApp(
        cfg.stream.app_id,
        fetch_max_wait_ms=cfg.stream.fetch_max_wait_ms,
        **kafka_client_kwargs(k, "faust"),  # broker and broker_credentials (TLS / SASL)
        store=cfg.stream.store,
        datadir=str(Path(cfg.stream.data_dir)),
        topic_partitions=k.partitions,
        topic_replication_factor=k.replication,
        topic_allow_declare=False,
        broker_session_timeout=k.session_timeout_ms / 1000,
        broker_heartbeat_interval=k.heartbeat_ms / 1000,
        broker_rebalance_timeout=k.rebalance_timeout_ms / 1000,
        # at-least-once with updates idempotent by event id on the embedded broker: tansu has no transactions
        # (its transactional producer init fails, ../shared/STACK.md); exactly-once is for a real Kafka
        processing_guarantee="exactly_once" if k.exactly_once else "at_least_once",
        broker_commit_interval=1.0,  # what a restart or rebalance reads again (Faust's default is 2.8 s)
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        key_serializer="raw",  # every key and value is bytes we encode ourselves (protobuf, state codec)
        value_serializer="raw",
        table_cleanup_interval=3600.0,
        # A user's state is one changelog record of several KB and a round writes dozens: big producer
        # batches, and a linger short against the read path's 1 s freshness budget that still lets a
        # round's records leave in a few requests.
        producer_max_batch_size=524_288,
        producer_linger=0.005,
        stream_wait_empty=True,  # a rebalance waits for in-flight batches (held records are let go by hooks)
        Monitor=CountingMonitor,
    )
    raw = {"key_serializer": "raw", "value_serializer": "raw"}
    events = app.topic(k.clicks_topic, k.impressions_topic, schema=RawBytesSchema(key_type=bytes, value_type=bytes))
    samples = app.topic(k.samples_topic, key_type=bytes, value_type=bytes, partitions=k.partitions, **raw)
    dead_letters = app.topic(k.dlq_topic, key_type=bytes, value_type=bytes, partitions=1, **raw)
    windows = app.Table(WINDOWS_TABLE, default=None, key_type=bytes, value_type=bytes, partitions=k.partitions)
    catalogue = TopicMirror(k, k.items_topic, decode_item, name="catalogue", values=catalogue_values(cfg))
    profiles = TopicMirror(k, k.users_topic, decode_profile, name="profiles")
    counters = Counters()
    # Every worker mirrors both topics whole; only the holder of clicks partition 0 writes their letters
    # (stream/mirror_letters.py says why and what that leaves).
    letters = MirrorDeadLetters(app, DeadLetterSink(dead_letters, counters, cfg.stream.max_event_bytes),
                                TP(k.clicks_topic, 0))
    catalogue.on_reject = profiles.on_reject = letters.reject
    return StreamApp(cfg, app, events, samples, dead_letters, windows, catalogue, profiles, counters, letters)


def catalogue_values(cfg: Config) -> MirrorValues[Item]:
    """Where the worker's catalogue mirror keeps its items: RocksDB under the data dir (memory that does not
    grow with the catalogue, docs/capacity.md §3), or a dict."""
    if cfg.stream.catalogue_store == "memory":
        return {}
    path = Path(cfg.stream.data_dir) / "mirrors" / "catalogue"
    return DiskValues(path, encode_item, decode_item, cfg.stream.catalogue_cache_items)
