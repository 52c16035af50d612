"""Sharded serving on loopback: 2 shards x 2 replicas of `xdm serve` over the embedded stack, reached through
the project's client (serving/client.py) with serving.shard_targets.

The users' windows come from a real worker that read a log; each server mirrors only its shard's changelog
partitions (xdm/shards.py). Tests that break a server use replica 0 of a shard; the others ask replica 1
directly, so any subset runs in any order.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time

import grpc
import pytest
from kafka import KafkaConsumer, TopicPartition

from infra.processes import free_port, wait_until
from infra.stack import config_env
from serving.client import BlockingRecallClient
from serving_stack import RequestStream, Servers, answered_by_model, clickers, start_serving_stack
from stream.reader import WindowsReader
from stream.topics import changelog_topic
from xdm.config import Config, apply_overrides, load_config
from xdm.shards import user_partition
from xdm.v1 import recall_pb2, recall_pb2_grpc

SHARDS, REPLICAS = 2, 2


def _index(shard: int, replica: int) -> int:
    return shard * REPLICAS + replica


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, small_log):
    # compute on a thread: four servers, one process each on two shared cores. small_log: what is proved
    # (where users go, who answers them) holds for any number of users, and a worker reads it in seconds
    cfg = load_config("test", env={}, overrides={"serving.compute": "thread"})
    # one arm: sharding routes users, whatever arm answers them; each arm more is a load in all four servers
    base = start_serving_stack(tmp_path_factory.mktemp("sharded") / "stack", small_log, cfg, arms=("xdm",))
    try:
        servers = Servers(base.stack, SHARDS * REPLICAS,
                          lambda i: {"serving.shards": SHARDS, "serving.shard": i // REPLICAS})
        for i in range(SHARDS * REPLICAS):
            servers.launch(i)
        for i in range(SHARDS * REPLICAS):
            servers.wait_serving(i, timeout_s=150)
        targets = ";".join(servers.target([_index(s, r) for r in range(REPLICAS)]) for s in range(SHARDS))
        client_cfg = apply_overrides(base.stack.cfg, {"serving.shards": SHARDS, "serving.shard_targets": targets})
        yield base.stack, servers, client_cfg
    finally:
        base.close()


def _keys_by_partition(cfg: Config, topic: str) -> dict[int, set[str]]:
    """Every key of `topic` by the partition the stack wrote it to (read to the end, one pass)."""
    consumer = KafkaConsumer(bootstrap_servers=cfg.kafka.bootstrap, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        found: dict[int, set[str]] = {tp.partition: set() for tp in parts}
        idle_since = time.monotonic()
        while time.monotonic() - idle_since < 2.0:
            batches = consumer.poll(timeout_ms=300)
            if any(batches.values()):
                idle_since = time.monotonic()
            for tp, records in batches.items():
                found[tp.partition].update(r.key.decode() for r in records if r.key is not None)
        return found
    finally:
        consumer.close()


@pytest.mark.timeout(300)
def test_the_stack_puts_each_user_where_the_shared_hash_says(sharded, small_log):
    stack, _, _ = sharded
    partitions = stack.cfg.kafka.partitions
    for topic in (stack.cfg.kafka.clicks_topic, changelog_topic(stack.cfg)):  # the producer's, then Faust's
        found = _keys_by_partition(stack.cfg, topic)
        assert all(found.values()), f"{topic}: a partition without users {found}"
        for partition, users in found.items():
            assert {user_partition(u, partitions) for u in users} == {partition}, topic


@pytest.mark.timeout(300)
def test_each_replica_holds_only_its_partitions_users(sharded, small_log):
    stack, servers, _ = sharded

    async def keys(cfg: Config) -> set[str]:
        reader = WindowsReader(cfg)
        await reader.start()
        try:
            return set(reader.mirror.values)
        finally:
            await reader.stop()

    everyone = asyncio.run(keys(stack.cfg))
    held = [asyncio.run(keys(apply_overrides(stack.cfg, {"serving.shards": SHARDS, "serving.shard": s})))
            for s in range(SHARDS)]
    assert held[0] and held[1] and held[0] | held[1] == everyone and not held[0] & held[1]
    for shard, users in enumerate(held):
        assert {user_partition(u, stack.cfg.kafka.partitions) % SHARDS for u in users} == {shard}
        for replica in range(REPLICAS):  # what each server process says its replica read
            log = servers.procs[_index(shard, replica)].log_path.read_text()
            caught_up = re.findall(r"mirror caught up keys=(\d+) mirror=windows", log)
            assert caught_up and int(caught_up[0]) == len(users), (shard, replica, caught_up)


@pytest.mark.timeout(300)
def test_every_user_is_answered_by_its_shard_and_refused_by_the_other(sharded, small_log):
    stack, servers, client_cfg = sharded
    users = clickers(small_log)
    stubs = [recall_pb2_grpc.RecallStub(grpc.insecure_channel(servers.procs[_index(s, 1)].address))
             for s in range(SHARDS)]
    owner = {u: user_partition(u, stack.cfg.kafka.partitions) % SHARDS for u in users}
    answered_by_model(stubs[owner[users[0]]], users[0], "xdm")  # the servers have loaded version 1
    with BlockingRecallClient(client_cfg) as client:
        for user in users:
            answer = client.recall(recall_pb2.RecallRequest(user_id=user, k=10, arm="xdm"), timeout_s=10)
            assert not answer.fallback, f"{user} answered without windows"  # its shard holds them
            with pytest.raises(grpc.RpcError) as refused:
                stubs[1 - owner[user]].Recall(recall_pb2.RecallRequest(user_id=user, k=10), timeout=10)
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert f"belongs to shard {owner[user]}" in refused.value.details()


@pytest.mark.timeout(300)
def test_a_replica_killed_or_hung_under_load_fails_no_call(sharded, small_log):
    _, servers, client_cfg = sharded
    users = clickers(small_log)
    with BlockingRecallClient(client_cfg) as client, RequestStream(client, users) as stream:
        wait_until(lambda: len(stream.ok_at) > 100, 60, "calls answered before the faults")
        killed_at = time.monotonic()
        servers.procs[_index(0, 0)].kill()  # kill -9: its connections reset mid-call
        wait_until(lambda: stream.successes_between(killed_at, time.monotonic()) > 100, 60, "answers after kill -9")
        hung = servers.procs[_index(1, 0)]
        hung.pause()  # SIGSTOP: connected but silent, calls to it only end at their try's deadline
        try:
            paused_at = time.monotonic()
            wait_until(lambda: stream.successes_between(paused_at, time.monotonic()) > 100, 60, "answers while hung")
        finally:
            hung.resume()
    assert stream.failures == [], stream.failures[:5]


@pytest.mark.timeout(120)
def test_a_server_whose_partition_count_is_not_the_changelogs_refuses_to_start(sharded):
    stack, _, _ = sharded
    wrong = {"kafka.partitions": 2 * stack.cfg.kafka.partitions, "serving.shards": SHARDS, "serving.shard": 1,
             "serving.port": free_port()}
    done = subprocess.run([sys.executable, "-m", "xdm", "--profile", "test", "serve"], capture_output=True, text=True,
                          env=config_env(apply_overrides(stack.cfg, wrong)), timeout=100)
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]  # the one line the CLI prints, nothing after it
    assert last.startswith("error: topic") and (f"has {stack.cfg.kafka.partitions} partitions but kafka.partitions "
                                                f"is {2 * stack.cfg.kafka.partitions}") in last, done.stderr[-2000:]
