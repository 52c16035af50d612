"""Stream workers under faults, on the real embedded broker (tansu) with RocksDB stores.

Every test compares the workers' windows with the pure rules applied to the log in time order
(`reference`): the changelog as the read path sees it, and the local RocksDB table of a worker once it
has stopped. Users are compared by their snapshot at their newest event, their newest event time and
their pending sample anchors (the raw rows may differ where pruning ran at another moment).
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from rocksdict import AccessType, Options, Rdict

from infra.processes import ManagedProcess, free_port, start_process, wait_until
from infra.services import start_broker
from infra.stack import config_env
from infra.topics import ensure_topics
from replay.producer import make_producer, produce_catalogue, produce_events
from stream import expected
from stream.expected import expected_run
from stream.mirror import TopicMirror
from stream.state_codec import decode_state
from stream.topics import changelog_topic
from stream.true_ends import reported_and_true_ends
from stream.windows import UserState, snapshot
from stream.wire import decode_sample, encode_event, encode_item
from xdm.config import Config, apply_overrides
from xdm.log_format import read_events, read_items
from xdm.records import Event, Item
from xdm.v1 import events_pb2

ROOT = Path(__file__).resolve().parents[2]
OFFSET_KEY = b"__faust\0offset__"  # Faust keeps a partition's changelog offset in the same RocksDB
EVENTS_MAX = 20_000  # the first events of the tiny log: enough to kill a worker mid-stream, quick to replay
# A SIGKILLed worker stays in its consumer group until its session times out, and its replacement
# waits for that; shorter sessions than the test profile's keep the restarts quick.
PACED_S = 8.0  # a live stream: the first half of the test log produced over this many seconds
FAST_GROUP = {"kafka.session_timeout_ms": 4000, "kafka.heartbeat_ms": 1000, "kafka.rebalance_timeout_ms": 6000}


# ---- the stack: a broker, topics, worker processes


@dataclass
class StreamStack:
    cfg: Config
    root: Path
    broker: ManagedProcess
    workers: dict[str, ManagedProcess]
    ports: dict[str, int]

    def start_worker(self, name: str) -> ManagedProcess:
        port = self.ports.setdefault(name, free_port())
        cfg = apply_overrides(self.cfg, {"stream.data_dir": str(self.data_dir(name)), "stream.metrics_port": port})
        proc = start_process(name, [sys.executable, "-m", "xdm", "--profile", "test", "worker"], self.root / "logs",
                             env=config_env(cfg), cwd=ROOT)
        self.workers[name] = proc
        return proc

    def data_dir(self, name: str) -> Path:
        return self.root / name

    def metrics(self, name: str) -> dict[str, float]:
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{self.ports[name]}/metrics", timeout=2).read().decode()
        except OSError:
            return {}
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name_, _, value = line.rpartition(" ")
                out[name_] = float(value)
        return out

    def wait_metric(self, worker: str, name: str, at_least: float, timeout_s: float = 60) -> None:
        proc = self.workers[worker]

        def reached() -> bool:
            assert proc.alive(), f"{worker} died:\n{proc.log_tail(40)}"
            return self.metrics(worker).get(name, 0) >= at_least

        wait_until(reached, timeout_s, f"{worker} {name} >= {at_least}", interval_s=0.2)

    def stop(self) -> None:
        for proc in self.workers.values():
            proc.stop()
        self.broker.stop()


@pytest.fixture(scope="module")
def log_events(tiny_log: Path) -> list[Event]:
    return list(read_events(tiny_log))[:EVENTS_MAX]


@contextmanager
def broker_stack(tmp_path: Path, test_config: Config, overrides: dict | None = None) -> Iterator[StreamStack]:
    """A fresh broker with every topic created and no worker yet; stopped (workers too) on exit."""
    broker = start_broker(tmp_path / "logs")
    cfg = apply_overrides(test_config, {"kafka.bootstrap": broker.address, **FAST_GROUP, **(overrides or {})})
    stack = StreamStack(cfg, tmp_path, broker, {}, {})
    try:
        ensure_topics(cfg)
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def stream_stack(tmp_path: Path, test_config: Config):
    with broker_stack(tmp_path, test_config) as stack:
        yield stack


# ---- expected windows and what the workers hold


def reference(events: list[Event], items: dict[str, Item], cfg: Config) -> dict[str, UserState]:
    return expected_run(events, items, cfg.windows, cfg.samples).states


def differing_users(want: dict[str, UserState], got: dict[str, UserState], cfg: Config) -> list[str]:
    return expected.differing_users(want, got, cfg.windows)


def changelog_states(cfg: Config) -> dict[str, UserState]:
    return {user: decode_state(raw) for user, raw in asyncio.run(_read_topic(cfg, changelog_topic(cfg))).items()}


def rocksdb_states(data_dir: Path) -> dict[str, UserState]:
    """Every row of a stopped worker's windows table, all partitions."""
    out: dict[str, UserState] = {}
    paths = sorted(data_dir.rglob("windows-*.db"))
    assert paths, f"no RocksDB table under {data_dir}"
    for path in paths:
        db = Rdict(str(path), options=Options(raw_mode=True), access_type=AccessType.read_only())
        try:
            for key, value in db.items():
                if key != OFFSET_KEY:
                    out[key.decode()] = decode_state(value)
        finally:
            db.close()
    return out


async def _read_topic(cfg: Config, topic: str, decode=bytes) -> dict:
    mirror = TopicMirror(cfg.kafka, topic, decode, name=topic)
    await mirror.start()
    try:
        await mirror.wait_caught_up(30)
    finally:
        await mirror.stop()
    return mirror.values


def wait_changelog_equals(want: dict[str, UserState], cfg: Config, stack: StreamStack, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    bad: list[str] = []
    while time.monotonic() < deadline:
        for proc in stack.workers.values():
            assert proc.alive() or proc.popen.returncode in (0, -9, -15), proc.log_tail(40)
        got = changelog_states(cfg)
        bad = differing_users(want, got, cfg)
        if not bad:
            return
        time.sleep(0.5)
    # Everything needed to tell a slow worker from a stalled one, since the tmp dir goes with the test.
    logs = "\n".join(f"--- {name} ({'alive' if proc.alive() else proc.popen.returncode}):\n{proc.log_tail(60)}"
                     for name, proc in stack.workers.items())
    raise AssertionError(f"{len(bad)} of {len(want)} users differ from the rules, e.g. {bad[:5]}; first: "
                         f"{describe_difference(want.get(bad[0]), got.get(bad[0]), cfg)}\n"
                         f"{changelog_census(cfg)}\n{logs}")


def changelog_census(cfg: Config) -> str:
    """Events in the broker per event topic; per changelog partition the reported end, the true end and
    the records a raw read from the beginning gets."""
    ends = asyncio.run(reported_and_true_ends(cfg.kafka, changelog_topic(cfg)))
    consumer = KafkaConsumer(bootstrap_servers=cfg.kafka.bootstrap, enable_auto_commit=False,
                             consumer_timeout_ms=3000)
    try:
        tps = [TopicPartition(changelog_topic(cfg), p) for p in sorted(ends)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        read = Counter(record.partition for record in consumer)
    finally:
        consumer.close()
    produced = {topic: sum(end for _, end in asyncio.run(reported_and_true_ends(cfg.kafka, topic)).values())
                for topic in (cfg.kafka.clicks_topic, cfg.kafka.impressions_topic)}
    per_partition = ", ".join(f"{p}: {ends[p][0]}/{ends[p][1]}/{read[p]}" for p in sorted(ends))
    return f"events in the broker {produced}; changelog (reported end/true end/records read) {per_partition}"


def describe_difference(want: UserState | None, got: UserState | None, cfg: Config) -> str:
    """The rules' and the changelog's windows side by side; a missing state also gets the census."""
    text = expected.describe_difference(want, got, cfg.windows)
    return text if want is not None and got is not None else f"{text}; {changelog_census(cfg)}"


def sample_ids(cfg: Config) -> list[str]:
    consumer = KafkaConsumer(cfg.kafka.samples_topic, bootstrap_servers=cfg.kafka.bootstrap,
                             auto_offset_reset="earliest", consumer_timeout_ms=2000, enable_auto_commit=False)
    try:
        return [decode_sample(record.value)[0].sample_id for record in consumer]
    finally:
        consumer.close()


def expected_sample_ids(events: list[Event], items: dict[str, Item], cfg: Config) -> set[str]:
    return expected_run(events, items, cfg.windows, cfg.samples).sample_ids


def produce(cfg: Config, log_dir: Path, events: list[Event], speed: float = 0.0) -> None:
    """Catalogue, then events (as fast as possible, or paced at `speed` times their event-time gaps)."""
    producer = make_producer(cfg.kafka)
    try:
        produce_catalogue(producer, cfg.kafka, log_dir)
        produce_events(producer, cfg.kafka, events, speed=speed, progress=False)
    finally:
        producer.close(timeout=10)


# ---- the tests


@pytest.mark.timeout(150)
def test_kill_9_in_the_middle_then_restart_gives_the_windows_of_an_uninterrupted_run(stream_stack, tiny_log,
                                                                                    log_events):
    cfg = stream_stack.cfg
    items, events = read_items(tiny_log), log_events
    want = reference(events, items, cfg)
    stream_stack.start_worker("w")
    produce(cfg, tiny_log, events)
    stream_stack.wait_metric("w", "xdm_stream_applied_total", len(events) // 3)
    before_kill = stream_stack.metrics("w")
    stream_stack.workers["w"].kill()  # SIGKILL: no shutdown, no final commit
    assert before_kill["xdm_stream_applied_total"] < len(events), "the kill must land in the middle of the stream"

    stream_stack.start_worker("w")  # same data dir: RocksDB as the crash left it
    wait_changelog_equals(want, cfg, stream_stack, timeout_s=60)
    after = stream_stack.metrics("w")
    stream_stack.workers["w"].stop()

    assert not differing_users(want, rocksdb_states(stream_stack.data_dir("w")), cfg)
    consumed = before_kill["xdm_stream_events_total"] + after["xdm_stream_events_total"]
    assert consumed >= len(events)  # at least once: what was not committed came again
    produced_samples = sample_ids(cfg)
    assert set(produced_samples) == expected_sample_ids(events, items, cfg)  # none lost (repeats allowed)


@pytest.mark.timeout(150)
def test_restart_and_rebuild_from_the_changelog_restore_every_row(stream_stack, tiny_log, log_events):
    """The broker under-reports changelog end offsets (STACK.md); recovery must still read to the end.

    Workers are ended with SIGKILL here (quicker than a clean stop, and RocksDB keeps what was written).
    """
    cfg = stream_stack.cfg
    items = read_items(tiny_log)
    # The log ends with one impression per user at once, so the last changelog records of a partition
    # are written together in one producer batch: that is when the broker under-reports the end.
    end_ts = log_events[-1].ts_ms + 1000
    touch_all = [Event(f"touch-{user}", end_ts, user, log_events[0].item_id, "impression")
                 for user in sorted({e.user_id for e in log_events})]
    events = log_events + touch_all
    want = reference(events, items, cfg)
    stream_stack.start_worker("w")
    produce(cfg, tiny_log, events)
    wait_changelog_equals(want, cfg, stream_stack, timeout_s=60)
    stream_stack.workers["w"].kill()
    ends = asyncio.run(reported_and_true_ends(cfg.kafka, changelog_topic(cfg)))
    assert any(reported < true for reported, true in ends.values()), (
        f"the broker reported every changelog end exactly ({ends}); this test needs the end-offset gap")

    # 1. restart on the existing store: its persisted offsets lie past the reported ends
    #    (Faust alone raises ConsistencyError here)
    last = events[-1]
    extra = [Event("after-restart", end_ts + 1000, last.user_id, last.item_id, "impression")]
    want = reference(events + extra, items, cfg)
    restart_and_apply(stream_stack, extra, want)
    assert not differing_users(want, rocksdb_states(stream_stack.data_dir("w")), cfg)

    # 2. wipe the store: the table is rebuilt from the changelog alone and must hold every row
    shutil.rmtree(stream_stack.data_dir("w"))
    extra2 = [Event("after-wipe", end_ts + 2000, events[0].user_id, events[0].item_id, "impression")]
    want = reference(events + extra + extra2, items, cfg)
    restart_and_apply(stream_stack, extra2, want)
    rebuilt = rocksdb_states(stream_stack.data_dir("w"))
    assert len(rebuilt) == len(want)
    assert not differing_users(want, rebuilt, cfg)


def restart_and_apply(stack: StreamStack, events: list[Event], want: dict[str, UserState]) -> None:
    """Start the worker, produce `events`, wait until the changelog holds `want` (so recovery is over and
    the new events are applied), SIGKILL it.

    The applied counter is not a sign of that: a worker killed right after applying an event may lose
    that event's changelog record and offset commit, and the next start applies it again, which counts
    before the new event has been read (seen 1 run in 6).
    """
    stack.start_worker("w")
    producer = make_producer(stack.cfg.kafka)
    try:
        produce_events(producer, stack.cfg.kafka, events, progress=False)
    finally:
        producer.close(timeout=10)
    wait_changelog_equals(want, stack.cfg, stack, timeout_s=60)  # holds the new events only once applied
    stack.workers["w"].kill()


def assigned(stack: StreamStack, name: str) -> int:
    """Event-topic partitions the worker owns now (0 while it is down or rebalancing)."""
    return int(stack.metrics(name).get("xdm_stream_assigned_partitions", 0))


@pytest.mark.timeout(180)
def test_a_second_worker_joins_mid_stream_and_the_first_takes_over_when_it_stops(stream_stack, tiny_log, log_events):
    """Two rebalances: b joins while a works through a live stream (records a holds for alignment are
    let go and read again), then b stops and a takes over b's users from the changelog."""
    cfg = stream_stack.cfg
    assert cfg.kafka.partitions >= 2
    items, events = read_items(tiny_log), log_events
    half = statistics.median(e.ts_ms for e in events)
    first, second = [e for e in events if e.ts_ms < half], [e for e in events if e.ts_ms >= half]
    stream_stack.start_worker("a")
    wait_until(lambda: assigned(stream_stack, "a") == 2 * cfg.kafka.partitions, 60, "a owns every partition")
    span_s = (first[-1].ts_ms - first[0].ts_ms) / 1000
    live = threading.Thread(target=produce, args=(cfg, tiny_log, first, span_s / PACED_S))  # a live stream
    live.start()
    time.sleep(PACED_S / 4)
    stream_stack.start_worker("b")  # joins while a is busy
    live.join()
    wait_until(lambda: assigned(stream_stack, "a") and assigned(stream_stack, "b"), 60, "both own partitions")
    wait_changelog_equals(reference(first, items, cfg), cfg, stream_stack, timeout_s=90)
    shared = {name: stream_stack.metrics(name)["xdm_stream_applied_total"] for name in ("a", "b")}
    assert all(n > 0 for n in shared.values()), f"both workers must own partitions: {shared}"

    stream_stack.workers["b"].stop()
    produce(cfg, tiny_log, second)
    want = reference(events, items, cfg)
    wait_changelog_equals(want, cfg, stream_stack, timeout_s=90)
    stream_stack.workers["a"].stop()
    took_over = rocksdb_states(stream_stack.data_dir("a"))
    assert not differing_users(want, took_over, cfg)  # a now holds b's users too, with the same windows


@pytest.mark.timeout(120)
def test_malformed_and_refused_events_go_to_the_dead_letters_and_the_worker_keeps_going(stream_stack):
    cfg = apply_overrides(stream_stack.cfg, {"stream.max_event_bytes": 1024})
    stream_stack.cfg = cfg
    now = int(time.time() * 1000)
    k = cfg.kafka
    producer = KafkaProducer(bootstrap_servers=k.bootstrap, acks="all")
    for item in (Item("i1", "leaf", "top", "brand", "shop"), Item("bad-item", "leaf\x1fx", "top", "b", "s")):
        producer.send(k.items_topic, key=item.item_id.encode(), value=encode_item(item))
    producer.flush()
    stream_stack.start_worker("w")

    def event(event_id: str, **fields) -> bytes:
        values = dict(event_id=event_id, user_id="u1", item_id="i1", ts_ms=now, kind=events_pb2.EVENT_KIND_CLICK)
        values.update(fields)
        return events_pb2.Event(**values).SerializeToString()

    bad = {
        "not_protobuf": (k.clicks_topic, b"\xff\x00garbage"),
        "missing_field": (k.clicks_topic, event("e-missing", user_id="")),
        "timestamp_too_old": (k.clicks_topic, event("e-negative", ts_ms=-5)),
        "timestamp_in_future": (k.clicks_topic, event("e-future", ts_ms=now + 10 * 86_400_000)),
        "unknown_kind": (k.clicks_topic, event("e-kind", kind=9)),
        "wrong_topic": (k.impressions_topic, event("e-wrong-topic")),
        "oversized": (k.clicks_topic, event("e-big", request_id="x" * 4000)),
        "rejected_by_rules": (k.clicks_topic, event("e-rules", item_id="bad-item")),
    }
    good = [Event("ok-1", now, "u1", "i1", "click"), Event("ok-unknown-item", now + 1, "u1", "i-new", "click")]
    for topic, payload in bad.values():
        producer.send(topic, key=b"u1", value=payload)
    for e in good:
        producer.send(k.clicks_topic, key=b"u1", value=encode_event(e))
    producer.flush()

    stream_stack.wait_metric("w", "xdm_stream_applied_total", len(good))
    stream_stack.wait_metric("w", "xdm_stream_dead_letters_total", len(bad))
    metrics = stream_stack.metrics("w")
    for code in bad:
        assert metrics[f'xdm_stream_dead_letters_by_reason_total{{reason="{code}"}}'] == 1, code
    assert metrics["xdm_stream_unknown_items_total"] == 1

    letters = [events_pb2.DeadLetter.FromString(v) for v in asyncio.run(_read_all(cfg, k.dlq_topic))]
    assert len(letters) == len(bad)
    assert {letter.source_topic for letter in letters} == {k.clicks_topic, k.impressions_topic}
    assert all(letter.reason and letter.offset >= 0 for letter in letters)
    assert max(len(letter.payload) for letter in letters) <= 1024  # an oversized payload is cut to the limit

    # still going: a late event is dropped and counted, a new catalogue item is joined once it arrives
    producer.send(k.items_topic, key=b"i-late", value=encode_item(Item("i-late", "leaf-9", "top-9", "b9", "s9")))
    producer.flush()
    stream_stack.wait_metric("w", "xdm_stream_catalogue_items", 3)  # the catalogue mirror follows the items topic
    late = Event("too-late", now - 10 * cfg.windows.lateness_ms, "u1", "i1", "click")
    fresh = Event("fresh", now + 2, "u1", "i-late", "click")
    for e in (late, fresh):
        producer.send(k.clicks_topic, key=b"u1", value=encode_event(e))
    producer.flush()
    producer.close()
    stream_stack.wait_metric("w", "xdm_stream_too_late_total", 1)
    stream_stack.wait_metric("w", "xdm_stream_applied_total", len(good) + 1)
    state = changelog_states(cfg)["u1"]
    windows = snapshot(state, state.max_ts, cfg.windows)
    assert [b.item for b in windows.short][-1] == Item("i-late", "leaf-9", "top-9", "b9", "s9")
    assert "too-late" not in state.seen and all(ts >= now for ts, _ in state.clicks)


async def _read_all(cfg: Config, topic: str) -> list[bytes]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=cfg.kafka.bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    try:
        out: list[bytes] = []
        while True:
            batch = await consumer.getmany(timeout_ms=1500)
            if not batch:
                return out
            out.extend(r.value for records in batch.values() for r in records)
    finally:
        await consumer.stop()
