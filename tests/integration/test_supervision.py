"""No background task dies silently, on the embedded stack: a real worker, a learner's published versions
and a Recall server run in this process (so a fault can be injected into it and its counters read).

- A store poll that fails: hot reload goes on (a version published meanwhile is served), the failures
  are counted, health turns NOT_SERVING once they outlast serving.task_unhealthy_after_s and SERVING
  again after recovery; Recall answers throughout.
- A changelog record the server cannot decode: counted and skipped, later windows still arrive.
- Malformed records on the items and users topics: dead-lettered by the worker with their reason.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections import Counter
from contextlib import asynccontextmanager

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from conftest import samples_from_log, wait_for_quiet_topics
from infra.processes import free_port
from infra.stack import start_services
from learner.online import OnlineLearner
from learner.publish import Publisher
from replay.producer import produce_log
from serving.server import RunningServer, create_server, start_deps
from stream.dlq import reason_code
from stream.mirror import BAD_RECORDS
from stream.state_codec import FORMAT_VERSION
from stream.topics import changelog_topic
from stream.wire import encode_event, encode_item, encode_profile
from xdm.config import load_config
from xdm.log_format import read_events, read_items
from xdm.records import Event, Item, UserProfile
from xdm.supervision import TASK_FAILURES
from xdm.v1 import events_pb2, recall_pb2, recall_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
UNHEALTHY_AFTER_S = 1.5


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_log):
    """Broker, Milvus Lite, one worker that has read the tiny log, version 1 of arm xdm published."""
    cfg = load_config("test", env={}, overrides={"serving.task_unhealthy_after_s": UNHEALTHY_AFTER_S,
                                                 "serving.compute": "thread", "serving.gc_freeze": False})
    stack = start_services(tmp_path_factory.mktemp("supervision") / "stack", cfg, "test")
    publisher = None
    try:
        stack.metrics_ports["worker"] = free_port()
        stack.start_worker()
        learner = OnlineLearner(stack.cfg, "xdm", "xdm")
        samples = samples_from_log(tiny_log, stack.cfg)
        for i in range(0, 320, 32):
            learner.trainer.step(samples[i:i + 32])
        publisher = Publisher(stack.cfg, "xdm", "xdm")
        publisher.publish(learner.trainer, 1)
        produce_log(stack.cfg.kafka, tiny_log, progress=False)
        wait_for_quiet_topics(stack.cfg, [changelog_topic(stack.cfg)])
        yield stack, learner, publisher
    finally:
        if publisher is not None:
            publisher.close()
        stack.stop()


@asynccontextmanager
async def running_server(cfg):
    deps = await start_deps(cfg)
    try:
        running = await create_server(cfg, deps)
    except BaseException:
        await deps.stop()
        raise
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield running, recall_pb2_grpc.RecallStub(channel), health_pb2_grpc.HealthStub(channel)
    finally:
        await running.stop(0)


async def _until(check, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        await asyncio.sleep(0.2)


async def _health(stub) -> int:
    return (await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)).status


async def _recall(stub, user: str) -> recall_pb2.RecallResponse:
    return await stub.Recall(recall_pb2.RecallRequest(user_id=user, k=20, arm="xdm"), timeout=5)


def _known_user(tiny_log) -> str:
    return Counter(e.user_id for e in read_events(tiny_log) if e.kind == "click").most_common(1)[0][0]


def _failures(task: str) -> float:
    return TASK_FAILURES.labels(task)._value.get()


@pytest.mark.timeout(240)
def test_a_failing_store_poll_keeps_hot_reload_and_turns_health_until_it_recovers(stack, tiny_log):
    stack, learner, publisher = stack
    user = _known_user(tiny_log)

    async def scenario() -> None:
        async with running_server(stack.cfg) as (running, recall, health):
            assert await _health(health) == SERVING
            assert (await _recall(recall, user)).model_version == 1
            registry = running.deps.registry
            real_poll, state = registry.poll_store, {"broken": True, "good_polls": 0}

            # The registry turns what it can foresee (an unreadable or refused LATEST.json) into dead
            # letters; this stands for whatever else escapes a poll.
            async def poll_store() -> None:
                if state["broken"]:
                    raise OSError("model store unreadable (injected)")
                await real_poll()
                state["good_polls"] += 1

            registry.poll_store = poll_store
            before = _failures("tower-watch")

            async def not_serving() -> bool:
                answer = await _recall(recall, user)  # answered all along, from the version it has
                assert not answer.fallback and answer.model_version == 1
                return await _health(health) == NOT_SERVING

            await _until(not_serving, 30, "health NOT_SERVING while store polls keep failing")
            assert _failures("tower-watch") > before

            await asyncio.to_thread(publisher.publish, learner.trainer, 2)

            async def version_2() -> bool:
                return (await _recall(recall, user)).model_version == 2

            await _until(version_2, 60, "version 2 served although store polls were failing")

            state["broken"] = False

            async def recovered() -> bool:
                return state["good_polls"] > 0 and await _health(health) == SERVING

            await _until(recovered, 30, "health SERVING again after a good store poll")
            settled = _failures("tower-watch")
            await _until(lambda: _polls_after(state, 1), 15, "another good store poll")
            assert _failures("tower-watch") == settled and await _health(health) == SERVING

    asyncio.run(scenario())


async def _polls_after(state: dict, n: int) -> bool:
    return state["good_polls"] > n


@pytest.mark.timeout(180)
def test_an_undecodable_changelog_record_is_skipped_and_later_windows_still_arrive(stack, tiny_log):
    stack, _, _ = stack
    cfg = stack.cfg
    user = _known_user(tiny_log)

    async def scenario() -> None:
        async with running_server(cfg) as (running, recall, _):
            reader = running.deps.reader
            assert not (await _recall(recall, user)).fallback  # the user is read, so cached by the replica
            bad_before, failures_before = BAD_RECORDS.labels("windows")._value.get(), _failures("mirror-windows")
            newer_format = bytes([FORMAT_VERSION + 1]) + b"a state this server cannot read"
            await asyncio.to_thread(_produce, cfg, changelog_topic(cfg), [(user.encode(), newer_format)])

            async def counted() -> bool:
                return BAD_RECORDS.labels("windows")._value.get() > bad_before

            await _until(counted, 30, "the undecodable changelog record counted")
            assert not (await _recall(recall, user)).fallback  # the user's last good windows

            catalogue = sorted(read_items(tiny_log))
            t = max(e.ts_ms for e in read_events(tiny_log) if e.user_id == user) + 1000
            clicks = [Event(f"supervision-click-{n}", t + n, user, catalogue[(11 * n) % len(catalogue)], "click")
                      for n in range(3)]
            await asyncio.to_thread(_produce, cfg, cfg.kafka.clicks_topic,
                                    [(e.user_id.encode(), encode_event(e)) for e in clicks])

            async def arrived() -> bool:
                windows = reader.windows(user)
                return windows is not None and windows.short[-1].item.item_id == clicks[-1].item_id

            await _until(arrived, 30, "windows written after the bad record reach the replica")
            assert not (await _recall(recall, user)).fallback
            assert _failures("mirror-windows") == failures_before  # skipped, not a crash of the reader

    asyncio.run(scenario())


@pytest.mark.timeout(120)
def test_malformed_item_and_profile_records_are_dead_lettered_with_their_reason(stack):
    stack, _, _ = stack
    cfg = stack.cfg
    k = cfg.kafka
    garbage = b"\x0a\xff\xff"  # a field length past the end: not a protobuf
    _produce(cfg, k.items_topic, [(None, encode_item(Item("dlq-item"))), (b"dlq-item-2", garbage)])
    _produce(cfg, k.users_topic, [(None, encode_profile(UserProfile("dlq-user", ()))), (b"dlq-user-2", garbage)])
    letters = _letters_from(cfg, {k.items_topic, k.users_topic}, want=4, timeout_s=60)
    by_topic = {topic: sorted(reason_code(letter.reason) for letter in letters if letter.source_topic == topic)
                for topic in (k.items_topic, k.users_topic)}
    assert by_topic == {k.items_topic: ["no_key", "not_protobuf"], k.users_topic: ["no_key", "not_protobuf"]}
    assert {letter.payload for letter in letters if reason_code(letter.reason) == "not_protobuf"} == {garbage}
    metrics = urllib.request.urlopen(stack.metrics_url("worker"), timeout=5).read().decode()
    assert 'xdm_bad_records_total{reader="catalogue"} 2.0' in metrics
    assert 'xdm_bad_records_total{reader="profiles"} 2.0' in metrics
    assert 'xdm_stream_dead_letters_by_reason_total{reason="no_key"} 2.0' in metrics


def _produce(cfg, topic: str, records: list[tuple[bytes | None, bytes]]) -> None:
    producer = KafkaProducer(bootstrap_servers=cfg.kafka.bootstrap, acks="all")
    try:
        for key, value in records:
            producer.send(topic, key=key, value=value)
        producer.flush(10)
    finally:
        producer.close(5)


def _letters_from(cfg, sources: set[str], want: int, timeout_s: float) -> list[events_pb2.DeadLetter]:
    """Dead letters of records from `sources`, read from the beginning until `want` came (or time ran out),
    then 2 s more to see any copy."""
    consumer = KafkaConsumer(bootstrap_servers=cfg.kafka.bootstrap, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(cfg.kafka.dlq_topic, p)
                      for p in sorted(consumer.partitions_for_topic(cfg.kafka.dlq_topic) or [0])]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        letters: list[events_pb2.DeadLetter] = []
        deadline, more_until = time.monotonic() + timeout_s, None
        while time.monotonic() < (more_until or deadline):
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    letter = events_pb2.DeadLetter.FromString(record.value)
                    if letter.source_topic in sources:
                        assert record.key == f"{letter.source_topic}/{letter.partition}/{letter.offset}".encode()
                        letters.append(letter)
            if len(letters) >= want and more_until is None:
                more_until = time.monotonic() + 2
        return letters
    finally:
        consumer.close()
