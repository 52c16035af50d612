"""The routing client's pure parts (serving/client.py): where each shard is, and when a call tries again."""

from __future__ import annotations

import time

import grpc
import pytest

from serving.client import MIN_TRY_S, BlockingRecallClient, Failover, shard_targets
from xdm.config import load_config
from xdm.errors import ConfigError
from xdm.shards import user_partition


def _cfg(**serving):
    return load_config("test", env={}, overrides={f"serving.{k}": v for k, v in serving.items()})


def test_each_shard_has_its_target_in_shard_order():
    assert shard_targets(_cfg()) == ["127.0.0.1:50051"]
    assert shard_targets(_cfg(), "10.0.0.1:7") == ["10.0.0.1:7"]
    two = _cfg(shards=2, shard_targets="ipv4:a:1,b:1; ipv4:c:1,d:1")
    assert shard_targets(two) == ["ipv4:a:1,b:1", "ipv4:c:1,d:1"]
    named = _cfg(shards=2, shard_targets="dns:///xdm-recall-{shard}-headless.xdm.svc:50051")
    assert shard_targets(named) == ["dns:///xdm-recall-0-headless.xdm.svc:50051",
                                    "dns:///xdm-recall-1-headless.xdm.svc:50051"]
    assert shard_targets(two, "h:1;h:2") == ["h:1", "h:2"]  # a caller's address takes the same syntax


def test_targets_that_do_not_match_the_shards_are_refused():
    with pytest.raises(ConfigError, match="set serving.shard_targets"):
        shard_targets(_cfg(shards=2))
    with pytest.raises(ConfigError, match="names 3 shard targets"):
        shard_targets(_cfg(shards=2, shard_targets="a:1;b:1;c:1"))
    with pytest.raises(ConfigError, match="names 1 shard targets"):
        shard_targets(_cfg(shards=2), "a:1")


def test_the_client_routes_a_user_by_the_producers_hash():
    partitions = load_config("test", env={}).kafka.partitions
    with BlockingRecallClient(_cfg(shards=2, shard_targets="127.0.0.1:1;127.0.0.1:2")) as client:  # lazy channels
        for user in (f"u{n}" for n in range(200)):
            assert client.routes.shard_of(user) == user_partition(user, partitions) % 2


def _error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="test")


def test_a_try_takes_half_the_time_left_and_the_last_takes_all():
    failover = Failover.within(4.0)
    assert 1.9 < failover.try_s() <= 2.0
    failover = Failover(time.monotonic() + MIN_TRY_S * 1.5)
    assert failover.try_s() > MIN_TRY_S  # half would be too short to be answered: all of it


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED])
def test_a_replicas_failure_is_tried_again_while_time_is_left(code):
    failover = Failover.within(5.0)
    pauses = [failover.pause_after(_error(code)) for _ in range(4)]
    assert pauses == [0.02, 0.04, 0.08, 0.16]
    assert Failover(time.monotonic() + 0.01).pause_after(_error(code)) is None  # no time for another try


@pytest.mark.parametrize("code", [grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT,
                                  grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.RESOURCE_EXHAUSTED])
def test_an_answer_about_the_call_itself_is_the_callers(code):
    assert Failover.within(5.0).pause_after(_error(code)) is None
