"""The Recall server when a part fails: its compute process killed, the model store unreadable, Milvus
stopped (on the Milvus path and with the default in-memory index), the server killed.

Each test breaks something, so each gets a Recall server of its own (function-scoped), started on the
module's services (broker, Milvus, a worker that has read the log, a version per arm); afterwards the
server is stopped and a stopped Milvus started again on its data, so the tests pass in any order or alone.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import samples_from_log
from infra.processes import wait_until
from learner.model_store import read_latest, tower_path
from serving_stack import (ServingStack, answered_by_model, ask, clickers, compute_child, scored_items,
                           start_serving_stack)
from xdm.config import apply_overrides, load_config
from xdm.v1 import recall_pb2, recall_pb2_grpc

MILVUS_PATH = {"serving.search_timeout_s": "1.0", "serving.local_index_max_items": "0"}  # search Milvus per request


@pytest.fixture(scope="module")
def base(tmp_path_factory, small_log) -> ServingStack:
    # small_log and one arm: each fault is one arm's users on one server, whatever the world's size; a
    # worker reads small_log in seconds, and every server of this module loads one arm, not two
    served = start_serving_stack(tmp_path_factory.mktemp("serving-faults") / "stack", small_log,
                                 load_config("test", env={}), arms=("xdm",))
    try:
        yield served
    finally:
        served.close()


@pytest.fixture
def start_server(base) -> Callable[[dict[str, str]], recall_pb2_grpc.RecallStub]:
    """start_server(serving overrides) -> a stub of a server of this test's own; stopped afterwards."""
    stack, shared_cfg = base.stack, base.stack.cfg
    channels: list[grpc.Channel] = []

    def start(overrides: dict[str, str]) -> recall_pb2_grpc.RecallStub:
        stack.cfg = apply_overrides(shared_cfg, overrides)
        stack.start_server()
        channels.append(grpc.insecure_channel(f"127.0.0.1:{stack.cfg.serving.port}"))
        return recall_pb2_grpc.RecallStub(channels[-1])

    yield start
    for channel in channels:
        channel.close()
    stack.cfg = shared_cfg
    for proc in [p for p in stack.processes if p.name == "server"]:
        proc.stop()
        stack.processes.remove(proc)
    if not stack.by_name("milvus").alive():
        stack.restart("milvus")


@pytest.mark.timeout(120)
def test_a_killed_compute_process_is_replaced_and_the_new_one_ends_with_a_killed_server(base, start_server,
                                                                                        small_log):
    """SIGKILL the server's compute child: at most the batches in flight fail, UNAVAILABLE; a new child
    loads the served versions and the same user gets a model's answer again. Then SIGKILL the server: the
    child is outside the server's process group (a group SIGTERM must not cut in-flight batches), so only
    its pipes tie it to the server, and it ends. One test, one server: both kill what the server started."""
    stub = start_server(MILVUS_PATH)
    user = clickers(small_log)[0]
    before = answered_by_model(stub, user, "xdm")
    assert not before.fallback
    server = base.stack.by_name("server")
    killed = compute_child(server.pid)
    os.kill(killed, signal.SIGKILL)
    answer = _answered_after_a_kill(stub, user)
    assert scored_items(answer) == scored_items(before) and answer.model_version == before.model_version
    child = compute_child(server.pid)
    assert child != killed

    assert os.getpgid(child) != os.getpgid(server.pid)
    server.kill()
    wait_until(lambda: not Path(f"/proc/{child}").exists() or _zombie(child), 10, "compute process exit")


def _answered_after_a_kill(stub, user: str, within_s: float = 60) -> recall_pb2.RecallResponse:
    """The model's answer once a new compute process serves (it starts when a batch finds the old one
    dead); only the batches in flight at the kill may fail, UNAVAILABLE."""
    codes: Counter = Counter()
    answer = None
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            answer = ask(stub, user, arm="xdm")
            if not answer.fallback:
                break
        except grpc.RpcError as err:
            codes[err.code().name] += 1
            time.sleep(0.2)
    assert set(codes) <= {"UNAVAILABLE"}, codes
    assert answer is not None and not answer.fallback, f"no model answer {within_s} s after the kill: {codes}"
    return answer


@pytest.mark.timeout(120)
def test_a_version_the_new_compute_process_cannot_load_falls_back_until_the_store_is_read_again(base, start_server,
                                                                                             small_log):
    """The model store unreadable when the compute child is replaced: the arm's users get the popular
    fallback (not errors) and the model's answers come back once the store is readable again."""
    stub = start_server(MILVUS_PATH)
    stack = base.stack
    user = clickers(small_log)[0]
    before = answered_by_model(stub, user, "xdm")
    tower = tower_path(stack.cfg.learner.model_store, "xdm", read_latest(stack.cfg.learner.model_store, "xdm").version)
    hidden = tower.with_suffix(".hidden")
    tower.rename(hidden)
    try:
        os.kill(compute_child(stack.by_name("server").pid), signal.SIGKILL)
        wait_until(lambda: _fallback_or_unavailable(stub, user), 60, "the lost version dropped")
    finally:
        hidden.rename(tower)
    again = answered_by_model(stub, user, "xdm")
    assert not again.fallback and scored_items(again) == scored_items(before)


def _fallback_or_unavailable(stub, user: str) -> bool:
    """True once the arm answers with the fallback; UNAVAILABLE is allowed on the way (the batch in flight)."""
    try:
        return ask(stub, user, arm="xdm").fallback
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.UNAVAILABLE, err
        return False


@pytest.mark.timeout(120)
def test_vector_store_down_gives_unavailable_quickly_and_a_restart_is_survived(base, start_server, small_log):
    """On the Milvus path every answer needs Milvus: with it stopped, calls end UNAVAILABLE within the
    search deadline, and what needs no vector store is still answered; once Milvus is back on its data
    (Milvus Lite restarts with every collection released), the same answers come back."""
    stub = start_server(MILVUS_PATH)
    user = clickers(small_log)[0]
    before = answered_by_model(stub, user, "xdm")
    base.stack.by_name("milvus").stop()
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        ask(stub, user, arm="xdm", timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert time.monotonic() - started < 5
    with pytest.raises(grpc.RpcError) as short:
        ask(stub, user, arm="xdm", timeout=0.2)
    assert short.value.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
    assert ask(stub, "nobody-has-seen-me", k=3).fallback  # still serving what needs no vector store
    base.stack.restart("milvus")
    wait_until(lambda: scored_items(ask(stub, user, arm="xdm")) == scored_items(before), 30, "answers after the Milvus restart")


@pytest.mark.timeout(180)
def test_milvus_down_with_the_default_in_memory_index_keeps_answering_and_a_restart_is_survived(base, start_server,
                                                                                                small_log):
    """With the default serving.local_index a server copies each version's vectors into memory when it loads
    the version, so a stopped Milvus changes no answer (and health stays SERVING); once Milvus is back on
    its data, a new compute process reads the served versions again, and the next version is served."""
    stack = base.stack
    defaults = load_config("test", env={}).serving
    assert defaults.local_index_max_items >= 1000 and defaults.local_index == "auto"  # in memory, by default
    stub = start_server({})
    user = clickers(small_log)[3]
    before = answered_by_model(stub, user, "xdm")
    assert not before.fallback

    stack.by_name("milvus").stop()
    answered_at = time.monotonic()
    while time.monotonic() - answered_at < 7:  # past the registry's store poll (5 s), which must change nothing
        answer = ask(stub, user, arm="xdm", timeout=2)
        assert not answer.fallback and scored_items(answer) == scored_items(before)
        time.sleep(0.2)
    with grpc.insecure_channel(f"127.0.0.1:{stack.cfg.serving.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="xdm.v1.Recall"),
                                                           timeout=2)
    assert health.status == health_pb2.HealthCheckResponse.SERVING

    stack.restart("milvus")  # Milvus Lite comes back with every collection released
    os.kill(compute_child(stack.by_name("server").pid), signal.SIGKILL)
    again = _answered_after_a_kill(stub, user)  # the new compute process read the versions' vectors again
    assert scored_items(again) == scored_items(before)
    publisher, learner = base.publishers["xdm"], base.learners["xdm"]
    version = publisher.next_version(before.model_version + 1)
    learner.trainer.step(samples_from_log(small_log, stack.cfg)[320:352])
    publisher.publish(learner.trainer, version)
    wait_until(lambda: ask(stub, user, arm="xdm").model_version == version, 60,
               f"version {version}, published after the Milvus restart, served")
    assert not ask(stub, user, arm="xdm").fallback


def _zombie(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
