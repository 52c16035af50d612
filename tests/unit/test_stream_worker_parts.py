"""Pure parts of the worker: dead-letter reason codes, metrics, true end offsets, config."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from stream.app import Counters
from stream.dlq import OTHER, reason_code
from stream.metrics import CountersCollector, metrics_registry
from stream.true_ends import probe_true_ends, true_end
from stream.wire import MalformedEvent, decode_event, encode_event
from xdm.config import load_config
from xdm.records import Event
from xdm.v1 import events_pb2

NOW = 1_800_000_000_000
LIMITS = dict(max_bytes=200, now_ms=NOW, max_future_ms=60_000)


def reason_of(payload: bytes) -> str:
    with pytest.raises(MalformedEvent) as exc:
        decode_event(payload, **LIMITS)
    return str(exc.value)


def pb(**fields) -> bytes:
    base = dict(event_id="e", user_id="u", item_id="i", ts_ms=NOW, kind=events_pb2.EVENT_KIND_CLICK)
    base.update(fields)
    return events_pb2.Event(**base).SerializeToString()


@pytest.mark.parametrize("payload,code", [
    (b"", "empty"),
    (b"x" * 500, "oversized"),
    (b"\xff\xff\xff", "not_protobuf"),
    (pb(user_id=""), "missing_field"),
    (pb(item_id="i" * 300), "oversized"),  # the whole payload is over 200 bytes first
    (pb(kind=7), "unknown_kind"),
    (pb(ts_ms=1_600_000), "timestamp_too_old"),
    (pb(ts_ms=-5), "timestamp_too_old"),
    (pb(ts_ms=NOW + 3_600_000), "timestamp_in_future"),
])
def test_every_wire_rejection_has_its_own_code(payload, code):
    assert reason_code(reason_of(payload)) == code


def test_worker_and_rule_reasons_have_codes():
    assert reason_code("click event on the impressions topic xdm.impressions") == "wrong_topic"
    assert reason_code("rejected by the window rules: event 'e' has ...") == "rejected_by_rules"
    assert reason_code("something new") == OTHER
    assert decode_event(encode_event(Event("e", NOW, "u", "i", "click")), **LIMITS).event_id == "e"


def test_metrics_expose_every_counter_and_reasons():
    counters = Counters(events=7, too_late=2, dead_letters=3, dead_letter_reasons={"oversized": 2, "empty": 1})
    text = generate_latest(metrics_registry(CountersCollector(counters, {"held_records": ("held", lambda: 5)})))
    text = text.decode()
    assert "xdm_stream_events_total 7.0" in text
    assert "xdm_stream_too_late_total 2.0" in text
    assert 'xdm_stream_dead_letters_by_reason_total{reason="oversized"} 2.0' in text
    assert "xdm_stream_held_records 5.0" in text
    counters.events += 1  # read at scrape time
    assert "xdm_stream_events_total 8.0" in generate_latest(metrics_registry(CountersCollector(counters))).decode()
    assert "events=7" in Counters(events=7).summary()


@pytest.mark.parametrize("reported,last,expected", [
    (9946, 10399, 10400),  # the embedded broker's under-reported end (STACK.md)
    (100, 99, 100),  # a real Kafka: the record at end - 1
    (100, 50, 100),  # never lowered
    (None, 4, 5),
    (0, 0, 1),
])
def test_true_end_covers_the_last_record_read(reported, last, expected):
    assert true_end(reported, last) == expected


def test_stream_settings_come_from_config():
    cfg = load_config("test", env={"XDM_STREAM__METRICS_PORT": "9123"}, overrides={"stream.batch_max": "50"})
    assert cfg.stream.metrics_port == 9123 and cfg.stream.batch_max == 50


def test_reader_keeps_windows_until_the_users_next_changelog_record():
    from stream.reader import WindowsReader
    from stream.state_codec import encode_state
    from stream.windows import UserState, apply_event
    from xdm.records import Item

    cfg = load_config("test", env={})
    reader = WindowsReader(cfg, cache_users=1)
    state = UserState()
    apply_event(state, Event("e1", NOW, "u1", "i1", "click"), Item("i1"), cfg.windows)
    reader.mirror.values["u1"] = encode_state(state)
    first = reader.windows("u1")
    assert [b.item.item_id for b in first.short] == ["i1"]
    rows = reader._cache["u1"][1]
    assert reader.windows("u1") == first and reader._cache["u1"][1] is rows  # unchanged record: no decode
    apply_event(state, Event("e2", NOW + 1, "u1", "i2", "click"), Item("i2"), cfg.windows)
    reader.mirror.values["u1"] = encode_state(state)  # changed under the reader (no hook): recomputed on read
    assert [b.item.item_id for b in reader.windows("u1").short] == ["i1", "i2"]
    apply_event(state, Event("e3", NOW + 2, "u1", "i3", "click"), Item("i3"), cfg.windows)
    raw = reader.mirror.values["u1"] = encode_state(state)
    reader.mirror.on_update("u1", raw)  # a changelog record of a user being read: recomputed on arrival
    assert reader._cache["u1"][0] is raw
    assert [b.item.item_id for b in reader.windows("u1").short] == ["i1", "i2", "i3"]
    reader.mirror.values["u2"] = encode_state(UserState())
    assert reader.windows("u2") is None and reader.windows("nobody") is None


def test_reader_cache_is_invisible_to_the_garbage_collector():
    """A full collection walks every tracked object while the server waits; cached windows must not add
    any (Behavior records did: ~110 a user, 0.6 s pauses at 10,000 cached users)."""
    import gc

    from stream.reader import WindowsReader
    from stream.state_codec import encode_state
    from stream.windows import UserState, apply_event
    from xdm.records import Item

    cfg = load_config("test", env={})
    reader = WindowsReader(cfg)
    state = UserState()
    for k in range(30):
        kind = "click" if k % 3 == 0 else "impression"
        apply_event(state, Event(f"e{k}", NOW + k, "u1", f"i{k % 12}", kind), Item(f"i{k % 12}", "leaf"), cfg.windows)
    reader.mirror.values["u1"] = encode_state(state)
    windows = reader.windows("u1")
    assert windows.short and windows.unclicked
    for _ in range(4):  # a collection untracks a tuple once its items are untracked: one level of nesting each
        gc.collect()
    assert not gc.is_tracked(reader._cache["u1"])


def test_faust_stream_iterator_yields_once_per_n_records():
    import asyncio

    from faust._cython import streams as compiled

    from stream.consumer import set_stream_yield_every

    try:
        assert set_stream_yield_every(4)
        async def other_task_runs() -> int:
            ran = 0

            async def tick() -> None:
                nonlocal ran
                while True:
                    ran += 1
                    await asyncio.sleep(0)

            task = asyncio.create_task(tick())
            await asyncio.sleep(0)  # the ticker starts
            start = ran
            for _ in range(12):
                await compiled.sleep(0)
            task.cancel()
            return ran - start

        assert asyncio.run(other_task_runs()) == 3  # 12 records, a turn every 4th
    finally:
        set_stream_yield_every(1)
    assert compiled.sleep is asyncio.sleep


class FakeConsumer:
    """Serves fetches from {(topic, partition): last offset}; a fetch returns a whole 'batch' of 3."""

    def __init__(self, last: dict[tuple[str, int], int]) -> None:
        self.last = last
        self.position: dict = {}

    def assign(self, tps) -> None:
        assert all(type(tp).__name__ == "TopicPartition" for tp in tps)  # aiokafka's own type

    def seek(self, tp, offset: int) -> None:
        self.position[tp] = offset

    async def getmany(self, *tps, timeout_ms: int):
        from types import SimpleNamespace

        out = {}
        for tp in tps:
            start, last = self.position[tp], self.last[(tp.topic, tp.partition)]
            if start <= last:
                end = min(start + 3, last + 1)
                out[tp] = [SimpleNamespace(offset=o) for o in range(start, end)]
                self.position[tp] = end
        return out


def test_probe_reads_past_an_under_reported_end_and_never_lowers_one():
    import asyncio

    from faust.types import TP

    last = {("cl", 0): 10399, ("cl", 1): 99, ("cl", 2): 40}
    reported = {TP("cl", 0): 9946, TP("cl", 1): 100, TP("cl", 2): 60, TP("cl", 3): None}
    ends = asyncio.run(probe_true_ends(FakeConsumer(last), reported))
    assert ends == {TP("cl", 0): 10400, TP("cl", 1): 100, TP("cl", 2): 60, TP("cl", 3): None}


def test_an_item_impressed_before_and_after_its_side_info_arrived_counts_as_one_item():
    from stream.windows import UserState, apply_event, snapshot
    from xdm.records import Item
    from xdm.stream_rules import WindowRules

    rules = WindowRules()
    state = UserState()
    unknown, known = Item("i1"), Item("i1", "leaf", "top", "brand", "shop")
    apply_event(state, Event("e1", NOW, "u1", "i1", "impression"), unknown, rules)
    apply_event(state, Event("e2", NOW + 1000, "u1", "i1", "impression"), known, rules)
    apply_event(state, Event("e3", NOW + 2000, "u1", "i2", "impression"), Item("i2"), rules)
    unclicked = snapshot(state, NOW + 2000, rules).unclicked
    assert [(b.ts_ms, b.item) for b in unclicked] == [(NOW + 1000, known)]  # two exposures, latest side info


@pytest.mark.parametrize("exactly_once", [False, True])
def test_the_exactly_once_switch_reaches_the_worker_and_the_readers(exactly_once, tmp_path):
    from stream.app import make_app
    from stream.reader import WindowsReader

    overrides = {"kafka.exactly_once": str(exactly_once).lower(), "stream.data_dir": str(tmp_path)}
    cfg = load_config("test", env={}, overrides=overrides)
    app = make_app(cfg).app
    assert app.conf.processing_guarantee.value == ("exactly_once" if exactly_once else "at_least_once")
    expected = "read_committed" if exactly_once else "read_uncommitted"
    assert WindowsReader(cfg).mirror.isolation_level == expected


def test_after_a_rebalance_a_partition_never_committed_is_read_again_from_its_beginning():
    # issue #9: aiokafka's seek to committed offsets left such a partition where the fetcher had got to,
    # so the records fetched and dropped during the rebalance were never read (and then committed past)
    import asyncio
    from types import SimpleNamespace

    from aiokafka import TopicPartition

    from stream.consumer import HookedConsumer

    clicks, kept, changelog = TopicPartition("xdm.clicks", 0), TopicPartition("xdm.clicks", 1), TopicPartition("cl", 0)
    rewound: list[TopicPartition] = []

    class Thread:
        async def seek_to_committed(self) -> dict:
            return {clicks: None, kept: 7, changelog: None}

        async def seek_to_beginning(self, *tps: TopicPartition) -> None:
            rewound.extend(tps)

    def consumer(reset: str) -> HookedConsumer:
        c = object.__new__(HookedConsumer)  # only what seek_to_committed uses
        c.app = SimpleNamespace(conf=SimpleNamespace(consumer_auto_offset_reset=reset),
                                topics=SimpleNamespace(acks_enabled_for=lambda topic: topic == "xdm.clicks"),
                                tables=SimpleNamespace(changelog_topics={"cl"}))
        c._thread = Thread()
        return c

    assert asyncio.run(consumer("earliest").seek_to_committed()) == {clicks: None, kept: 7, changelog: None}
    assert rewound == [clicks]  # a committed partition stays put, a changelog is recovery's business
    rewound.clear()
    asyncio.run(consumer("latest").seek_to_committed())
    assert rewound == []


def test_records_faust_would_drop_after_the_fetch_waited_are_given_back():
    # issue #9: Faust fetched with its live set of active partitions and dropped the records of a partition
    # paused meanwhile, after aiokafka had moved past them; a standby changelog replica skipped them for good
    import asyncio
    import contextlib
    from types import SimpleNamespace

    from faust.types import TP

    from stream.recovery import ProbingConsumerThread

    standby, stream_tp, other = TP("cl", 1), TP("xdm.clicks", 0), TP("cl", 2)
    asked: list[set] = []
    sought: list[tuple] = []
    thread = object.__new__(ProbingConsumerThread)  # only what _fetch_records uses
    thread.consumer = SimpleNamespace(flow_active=True, _buffered_partitions=set())

    def fetch(active: set, meanwhile) -> dict:
        class Fetcher:
            _closed = False
            _subscriptions = SimpleNamespace(fetch_context=contextlib.nullcontext)

            async def fetched_records(self, partitions, timeout=None, max_records=None):
                asked.append(partitions)
                meanwhile()  # what the main thread does while the fetch waits
                return {tp: [SimpleNamespace(offset=o) for o in (7, 8)] for tp in (standby, stream_tp, other)
                        if tp in partitions}

        kafka = SimpleNamespace(_fetcher=Fetcher(), _closed=False, seek=lambda tp, at: sought.append((tp, at)))
        return asyncio.run(thread._fetch_records(kafka, active, timeout=1.0))

    active = {standby, stream_tp}
    got = fetch(active, lambda: active.discard(standby))  # recovery pauses the standby partition
    assert asked == [{standby, stream_tp}] and asked[0] is not active  # a copy: emptied, it is not "all"
    assert list(got) == [stream_tp] and sought == [(standby, 7)]

    sought.clear()
    got = fetch({standby, stream_tp}, lambda: setattr(thread.consumer, "flow_active", False))  # a rebalance
    assert got == {} and sorted(sought) == sorted([(standby, 7), (stream_tp, 7)])


def test_counting_monitor_keeps_faust_liveness_probe_fed():
    # Faust's consumer thread logs "Stream has not started processing" for a partition with no inbound time
    # once stream_processing_timeout has passed; the slimmed monitor must still record it.
    from faust.types import TP

    from stream.consumer import CountingMonitor

    monitor = CountingMonitor()
    tp = TP("xdm.clicks", 0)
    monitor.on_stream_event_in(tp, 5, stream=None, event=None)
    assert tp in monitor.stream_inbound_time
