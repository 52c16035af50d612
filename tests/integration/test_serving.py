"""The Recall server on the embedded stack: windows from a real worker, towers and vectors published by
real learners' code, a real `xdm serve` process. One stack is shared by this module's tests (in order)."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hypothesis import HealthCheck, given, settings, strategies as st
from kafka import KafkaProducer

from conftest import samples_from_log, wait_for_quiet_topics
from stream.topics import changelog_topic
from infra.processes import child_pids, wait_until
from infra.stack import start_services
from learner.model_store import read_latest
from learner.online import OnlineLearner
from learner.publish import Publisher
from replay.producer import produce_log
from stream.wire import encode_event
from xdm.config import apply_overrides, load_config
from xdm.log_format import read_events, read_items
from xdm.records import Event
from xdm.v1 import recall_pb2, recall_pb2_grpc

ARMS = ("xdm", "sdm")


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_log):
    # The Milvus path (what large catalogues use); the closed-loop test covers the in-memory index.
    cfg = load_config("test", env={}, overrides={"serving.search_timeout_s": "1.0", "serving.local_index_max_items": "0"})
    stack = start_services(tmp_path_factory.mktemp("serving") / "stack", cfg, "test", arms="xdm:50,sdm:50")
    try:
        stack.start_worker()
        publishers = {}
        learners = {}
        samples = samples_from_log(tiny_log, stack.cfg)
        for arm in ARMS:
            learner = OnlineLearner(stack.cfg, arm, arm)
            for i in range(0, 320, 32):
                learner.trainer.step(samples[i:i + 32])
            publishers[arm] = Publisher(stack.cfg, arm, arm)
            publishers[arm].publish(learner.trainer, 1)
            learners[arm] = learner
        stack.start_server()
        produce_log(stack.cfg.kafka, tiny_log, progress=False)
        wait_for_quiet_topics(stack.cfg, [changelog_topic(stack.cfg), stack.cfg.kafka.samples_topic])
        channel = grpc.insecure_channel(f"127.0.0.1:{stack.cfg.serving.port}")
        yield stack, recall_pb2_grpc.RecallStub(channel), learners, publishers
        channel.close()
        for publisher in publishers.values():
            publisher.close()
    finally:
        stack.stop()


def _last_event_ms(log: Path) -> dict[str, int]:
    last: dict[str, int] = {}
    for e in read_events(log):
        last[e.user_id] = max(last.get(e.user_id, 0), e.ts_ms)
    return last


def _known_user(tiny_log) -> str:
    clicks = Counter(e.user_id for e in read_events(tiny_log) if e.kind == "click")
    return clicks.most_common(1)[0][0]


def _ask(stub, user: str, k: int = 20, arm: str = "", timeout: float = 5.0) -> recall_pb2.RecallResponse:
    return stub.Recall(recall_pb2.RecallRequest(user_id=user, k=k, arm=arm), timeout=timeout)


def _answered_by_model(stub, user: str, arm: str) -> recall_pb2.RecallResponse:
    deadline = time.monotonic() + 60
    while True:
        answer = _ask(stub, user, arm=arm)
        if not answer.fallback or time.monotonic() > deadline:
            return answer
        time.sleep(0.3)


def _send(cfg, events: list[Event]) -> None:
    producer = KafkaProducer(bootstrap_servers=cfg.kafka.bootstrap, acks="all")
    for e in events:
        topic = cfg.kafka.clicks_topic if e.kind == "click" else cfg.kafka.impressions_topic
        producer.send(topic, key=e.user_id.encode(), value=encode_event(e))
    producer.flush()
    producer.close()


def _items(answer) -> list[tuple[str, float]]:
    return [(i.item_id, round(i.score, 5)) for i in answer.items]


@pytest.mark.timeout(180)
def test_a_click_moves_the_fused_vector_and_the_answer(served, tiny_log):
    stack, stub, _, _ = served
    user = _known_user(tiny_log)
    before = _answered_by_model(stub, user, "xdm")
    assert not before.fallback and before.model_version == 1 and len(before.items) == 20
    catalogue = sorted(read_items(tiny_log))
    t = _last_event_ms(tiny_log)[user] + 1000
    clicks = [Event(f"test-click-{n}", t + n * 1000, user, catalogue[(7 * n) % len(catalogue)], "click")
              for n in range(3)]
    _send(stack.cfg, clicks)
    wait_until(lambda: _items(_ask(stub, user, arm="xdm")) != _items(before), 20, "a changed answer after clicks")


@pytest.mark.timeout(180)
def test_unclicked_items_change_the_xdm_answer_but_not_the_sdm_answer(served, tiny_log):
    stack, stub, _, _ = served
    users = [u for u, _ in Counter(e.user_id for e in read_events(tiny_log) if e.kind == "click").most_common(5)]
    user = users[1]
    xdm_before = _answered_by_model(stub, user, "xdm")
    sdm_before = _answered_by_model(stub, user, "sdm")
    t = _last_event_ms(tiny_log)[user] + 1000
    shown = sorted(read_items(tiny_log))[:12]
    impressions = [Event(f"test-imp-{n}-{rep}", t + 100 * n + rep, user, item, "impression")
                   for n, item in enumerate(shown) for rep in range(3)]  # exposed more than k=1 times
    _send(stack.cfg, impressions)
    wait_until(lambda: _items(_ask(stub, user, arm="xdm")) != _items(xdm_before), 20,
               "the XDM answer to move after unclicked impressions")
    wait_for_quiet_topics(stack.cfg, [changelog_topic(stack.cfg)])
    assert _items(_ask(stub, user, arm="sdm")) == _items(sdm_before)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("request_kwargs,fragment", [
    ({"user_id": "", "k": 5}, "user_id is empty"),
    ({"user_id": "u", "k": 0}, "k must be between 1 and"),
    ({"user_id": "u", "k": 100000}, "k must be between 1 and"),
    ({"user_id": "u", "k": 5, "arm": "nope"}, "unknown arm 'nope'"),
    ({"user_id": "u" * 300, "k": 5}, "longer than 256"),
])
def test_bad_requests_get_invalid_argument_with_a_message(served, request_kwargs, fragment):
    _, stub, _, _ = served
    with pytest.raises(grpc.RpcError) as err:
        stub.Recall(recall_pb2.RecallRequest(**request_kwargs), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in err.value.details()


@pytest.mark.timeout(120)
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(user=st.text(max_size=300), k=st.integers(min_value=-(2**31), max_value=2**31 - 1),
       arm=st.sampled_from(["", "xdm", "sdm", "other", "\x00"]), exclude=st.booleans())
def test_random_requests_never_break_the_server(served, user, k, arm, exclude):
    _, stub, _, _ = served
    try:
        answer = stub.Recall(recall_pb2.RecallRequest(user_id=user, k=k, arm=arm, exclude_clicked=exclude), timeout=5)
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
        return
    assert len(answer.items) <= k and answer.arm in ARMS


@pytest.mark.timeout(60)
def test_unknown_user_gets_popular_items_flagged_as_fallback(served, tiny_log):
    _, stub, _, _ = served
    answer = _ask(stub, "nobody-has-seen-me", k=5)
    assert answer.fallback and len(answer.items) == 5
    catalogue = read_items(tiny_log)
    assert all(i.item_id in catalogue for i in answer.items)


@pytest.mark.timeout(60)
def test_exclude_clicked_drops_the_users_clicked_items(served, tiny_log):
    stack, stub, _, _ = served
    user = _known_user(tiny_log)
    answer = stub.Recall(recall_pb2.RecallRequest(user_id=user, k=50, arm="xdm", exclude_clicked=True), timeout=5)
    clicked = {e.item_id for e in read_events(tiny_log) if e.user_id == user and e.kind == "click"}
    assert len(answer.items) == 50
    recent = clicked & {i.item_id for i in answer.items}
    # the windows hold the latest session and 7 days of clicks; none of those may come back
    assert len(recent) < len(clicked)


@pytest.mark.timeout(60)
def test_health_and_reflection(served):
    stack, _, _, _ = served
    with grpc.insecure_channel(f"127.0.0.1:{stack.cfg.serving.port}") as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="xdm.v1.Recall"))
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = reflect.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for r in replies for s in r.list_services_response.service}
        assert "xdm.v1.Recall" in names


@pytest.mark.timeout(180)
def test_hot_reload_under_load_fails_no_request(served, tiny_log):
    stack, stub, learners, publishers = served
    users = [u for u, _ in Counter(e.user_id for e in read_events(tiny_log) if e.kind == "click").most_common(20)]
    failures, versions, stop = [], Counter(), threading.Event()

    def load(worker: int) -> None:
        n = 0
        while not stop.is_set():
            try:
                answer = _ask(stub, users[(worker + n) % len(users)], arm="xdm")
                versions[answer.model_version] += 1
            except grpc.RpcError as err:
                failures.append(f"{err.code().name}: {err.details()}")
            n += 1

    threads = [threading.Thread(target=load, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    try:
        samples = samples_from_log(tiny_log, stack.cfg)
        for version in (2, 3, 4):
            learners["xdm"].trainer.step(samples[version * 32:(version + 1) * 32])
            publishers["xdm"].publish(learners["xdm"].trainer, version)
        wait_until(lambda: versions[4] > 20, 60, "requests answered by version 4")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert not failures, failures[:5]
    assert versions[1] + versions[2] + versions[3] > 0 and versions[4] > 20


@pytest.mark.timeout(120)
def test_a_burst_of_concurrent_calls_is_queued_not_cancelled(served, tiny_log):
    # A backend fanning out a page of users at once: gRPC's default queue of 1,000 calls not yet taken
    # answered the overflow CANCELLED (a quarter of 3,000 in the closed loop's first default-world run).
    stack, _, _, _ = served
    users = sorted({e.user_id for e in read_events(tiny_log)})

    async def burst(n: int) -> Counter:
        codes: Counter = Counter()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.cfg.serving.port}") as channel:
            stub = recall_pb2_grpc.RecallStub(channel)

            async def one(i: int) -> None:
                try:
                    await stub.Recall(recall_pb2.RecallRequest(user_id=users[i % len(users)], k=20), timeout=60)
                    codes["OK"] += 1
                except grpc.aio.AioRpcError as err:
                    codes[err.code().name] += 1

            await asyncio.gather(*(one(i) for i in range(n)))
        return codes

    codes = asyncio.run(burst(3000))
    # overload may end calls UNAVAILABLE (search deadline, counted from the queue), never CANCELLED
    assert codes["OK"] > 0 and set(codes) <= {"OK", "UNAVAILABLE"}, codes


@pytest.mark.timeout(120)
def test_a_killed_compute_process_is_replaced_and_answers_resume(served, tiny_log):
    """SIGKILL the server's compute child: at most the batches in flight fail, UNAVAILABLE; a new child
    loads the served versions and the same user gets a model's answer again."""
    stack, stub, _, _ = served
    user = _known_user(tiny_log)
    before = _answered_by_model(stub, user, "xdm")
    assert not before.fallback
    server_pid = stack.by_name("server").pid
    killed = _compute_child(server_pid)
    os.kill(killed, signal.SIGKILL)
    codes: Counter = Counter()
    answer = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            answer = _ask(stub, user, arm="xdm")
            if not answer.fallback:
                break
        except grpc.RpcError as err:
            codes[err.code().name] += 1
            time.sleep(0.2)
    assert set(codes) <= {"UNAVAILABLE"}, codes
    assert answer is not None, f"no answer within 60 s after the kill: {codes}"
    assert _items(answer) == _items(before) and answer.model_version == before.model_version
    assert _compute_child(server_pid) != killed


@pytest.mark.timeout(120)
def test_a_version_the_new_compute_process_cannot_load_falls_back_until_the_store_is_read_again(served, tiny_log):
    """The model store unreadable when the compute child is replaced: the arm's users get the popular
    fallback (not errors) and the model's answers come back once the store is readable again."""
    stack, stub, _, _ = served
    user = _known_user(tiny_log)
    before = _answered_by_model(stub, user, "xdm")
    tower = Path(read_latest(stack.cfg.learner.model_store, "xdm").tower_uri)
    hidden = tower.with_suffix(".hidden")
    tower.rename(hidden)
    try:
        os.kill(_compute_child(stack.by_name("server").pid), signal.SIGKILL)
        wait_until(lambda: _fallback_or_unavailable(stub, user), 60, "the lost version dropped")
    finally:
        hidden.rename(tower)
    again = _answered_by_model(stub, user, "xdm")
    assert not again.fallback and _items(again) == _items(before)


def _fallback_or_unavailable(stub, user: str) -> bool:
    """True once the arm answers with the fallback; UNAVAILABLE is allowed on the way (the batch in flight)."""
    try:
        return _ask(stub, user, arm="xdm").fallback
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.UNAVAILABLE, err
        return False


def _compute_child(server_pid: int) -> int:
    """The server's multiprocessing child that runs the towers (not its resource tracker)."""
    for pid in child_pids(server_pid):
        if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
            return pid
    raise AssertionError(f"server {server_pid} has no compute process")


@pytest.mark.timeout(120)
def test_vector_store_down_gives_unavailable_quickly_and_the_server_stays_up(served, tiny_log):
    stack, stub, _, _ = served
    user = _known_user(tiny_log)
    stack.by_name("milvus").stop()
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        _ask(stub, user, arm="xdm", timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert time.monotonic() - started < 5
    with pytest.raises(grpc.RpcError) as short:
        _ask(stub, user, arm="xdm", timeout=0.2)
    assert short.value.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
    assert _ask(stub, "nobody-has-seen-me", k=3).fallback  # still serving what needs no vector store


@pytest.mark.timeout(60)
def test_the_compute_process_ends_with_a_killed_server(served):
    """Last in this module: it kills the server. The child is outside the server's process group (a
    group SIGTERM must not cut in-flight batches), so only its pipes tie it to the server."""
    stack, _, _, _ = served
    server = stack.by_name("server")
    child = _compute_child(server.pid)
    assert os.getpgid(child) != os.getpgid(server.pid)
    server.kill()
    wait_until(lambda: not Path(f"/proc/{child}").exists() or _zombie(child), 10, "compute process exit")


def _zombie(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
