"""Stream workers scale out and in on one box while events flow, and no event is lost or counted twice.

One live stream (the first events of the tiny log, in time order) is produced in four paced segments;
during each segment the worker group changes: b joins, c joins, b stops gracefully, c is killed with
SIGKILL (the "graceful" variant stops c cleanly instead). Six partitions per event topic, so three
workers all own some. At the end the windows read from the changelog must equal the pure window rules
applied to the same events in time order (the reference `test_stream_faults.py` uses, i.e. what a
single uninterrupted worker produces there), through both the raw states and
`stream.reader.WindowsReader` (the read path serving uses), and every user's click rows must equal the
user's clicks in the log: a lost event would leave one out, an event applied twice would add a row.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from test_stream_faults import (
    StreamStack,
    assigned,
    broker_stack,
    changelog_states,
    differing_users,
    expected_sample_ids,
    reference,
    rocksdb_states,
    sample_ids,
    wait_changelog_equals,
)

from infra.processes import wait_until
from replay.producer import make_producer, produce_catalogue, produce_events
from stream.reader import WindowsReader
from stream.windows import UserState, snapshot
from xdm.config import Config
from xdm.log_format import read_events, read_items
from xdm.records import Event

PARTITIONS = 6  # per event topic: 3 workers own 4 of the 12 clicks + impressions partitions each
EVENTS_MAX = 20_000  # ~57 h of the tiny log's event time, 37 users
SEGMENT_S = 4.0  # each of the four segments is produced over this many seconds (a live stream)
JOIN_S = 60.0  # a worker start plus a rebalance took 6-15 s here; loaded machines are slower


@pytest.fixture
def six_partitions(tmp_path: Path, test_config: Config):
    with broker_stack(tmp_path, test_config, {"kafka.partitions": PARTITIONS}) as stack:
        yield stack


class PacedSegment:
    """Produces one segment of the log in a background thread, paced over SEGMENT_S, while the caller
    changes the worker group."""

    def __init__(self, cfg: Config, events: list[Event]) -> None:
        span_s = max((events[-1].ts_ms - events[0].ts_ms) / 1000, 1.0)
        self.cfg, self.events, self.speed = cfg, events, span_s / SEGMENT_S
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        producer = make_producer(self.cfg.kafka)
        try:
            produce_events(producer, self.cfg.kafka, self.events, speed=self.speed, progress=False)
        except BaseException as exc:  # re-raised in the test's thread by __exit__
            self.error = exc
        finally:
            producer.close(timeout=10)

    def __enter__(self) -> PacedSegment:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._thread.join(timeout=60)
        if self.error is not None:
            raise self.error

    def flowing(self) -> bool:
        return self._thread.is_alive()


def owners_are(stack: StreamStack, names: set[str]) -> Callable[[], bool]:
    """Exactly `names` own partitions, and together every event-topic partition (a settled group)."""
    total = 2 * stack.cfg.kafka.partitions

    def settled() -> bool:
        owned = {name: assigned(stack, name) for name in stack.workers if stack.workers[name].alive()}
        return {n for n, k in owned.items() if k} == names and sum(owned.values()) == total

    return settled


def applied(stack: StreamStack, name: str) -> float:
    return stack.metrics(name).get("xdm_stream_applied_total", 0)


async def reader_windows(cfg: Config, users: list[str]) -> dict:
    reader = WindowsReader(cfg, cache_users=0)
    await reader.start(wait_s=30)
    try:
        return {user: reader.windows(user) for user in users}
    finally:
        await reader.stop()


@pytest.mark.timeout(240)
@pytest.mark.parametrize("crash", [False, True], ids=["graceful", "kill-9"])
def test_workers_join_leave_and_crash_mid_stream_and_the_windows_equal_one_uninterrupted_run(six_partitions,
                                                                                            tiny_log, crash):
    stack, cfg = six_partitions, six_partitions.cfg
    items = read_items(tiny_log)
    events = list(read_events(tiny_log))[:EVENTS_MAX]
    quarter = len(events) // 4
    segments = [events[i * quarter:(i + 1) * quarter if i < 3 else None] for i in range(4)]
    producer = make_producer(cfg.kafka)
    produce_catalogue(producer, cfg.kafka, tiny_log)
    producer.close(timeout=10)

    stack.start_worker("a")
    wait_until(owners_are(stack, {"a"}), JOIN_S, "a owns every partition")
    did: dict[str, float] = {}  # events each worker applied, read just before it left

    with PacedSegment(cfg, segments[0]):  # 1 -> 2 workers
        stack.start_worker("b")
        wait_until(owners_are(stack, {"a", "b"}), JOIN_S, "a and b share the partitions")
    with PacedSegment(cfg, segments[1]):  # 2 -> 3 workers
        stack.start_worker("c")
        wait_until(owners_are(stack, {"a", "b", "c"}), JOIN_S, "a, b and c share the partitions")
    with PacedSegment(cfg, segments[2]) as live:  # 3 -> 2: graceful stop
        before = applied(stack, "b")
        wait_until(lambda: applied(stack, "b") > before or not live.flowing(), JOIN_S, "b busy")
        assert live.flowing(), "b must stop while events flow"
        did["b"] = applied(stack, "b")
        stack.workers["b"].stop()
        wait_until(owners_are(stack, {"a", "c"}), JOIN_S, "a and c take over b's partitions")
    with PacedSegment(cfg, segments[3]) as live:  # 2 -> 1: crash (a takes over once c's session expires)
        before = applied(stack, "c")
        wait_until(lambda: applied(stack, "c") > before or not live.flowing(), JOIN_S, "c busy")
        assert live.flowing(), "c must leave while events flow"
        did["c"] = applied(stack, "c")
        if crash:
            stack.workers["c"].kill()  # SIGKILL: no final commit, no leave-group
        else:
            stack.workers["c"].stop()
        wait_until(owners_are(stack, {"a"}), JOIN_S, "a takes over c's partitions")

    want = reference(events, items, cfg)
    wait_changelog_equals(want, cfg, stack, timeout_s=90)
    assert did["b"] > 0 and did["c"] > 0, f"every worker must have owned users: {did}"

    # the read path serving uses sees the same windows
    users = sorted(want)
    served = asyncio.run(reader_windows(cfg, users))
    assert [u for u in users if served[u] != snapshot(want[u], want[u].max_ts, cfg.windows)] == []

    # none lost, none applied twice: the tiny log's first events are never pruned (6 days < long_term_ms),
    # so a user's click rows are exactly the user's clicks in the log
    clicks = Counter(e.user_id for e in events if e.kind == "click")
    states: dict[str, UserState] = changelog_states(cfg)
    click_rows = {user: len(state.clicks) for user, state in states.items()}
    assert click_rows == {user: clicks[user] for user in want}
    assert set(sample_ids(cfg)) == expected_sample_ids(events, items, cfg)  # repeats allowed, none missing

    stack.workers["a"].stop()
    assert not differing_users(want, rocksdb_states(stack.data_dir("a")), cfg)  # a ends up with every user
