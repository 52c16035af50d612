"""user -> partition -> shard (xdm/shards.py): the hash is the producers' own, the layouts refuse what cannot route."""

from __future__ import annotations

import random

import pytest
from aiokafka.partitioner import DefaultPartitioner as AiokafkaPartitioner
from kafka.partitioner.default import murmur2 as kafka_murmur2

from stream.partitions import PartitionShare, TopicLayoutMismatch
from xdm.config import load_config
from xdm.errors import ConfigError
from xdm.shards import ShardLayout, shard_layout, user_partition


def test_user_partition_is_where_both_producers_put_the_user():
    rng = random.Random(3)
    users = [f"u{n}" for n in range(2000)] + ["", "ü-ß-✓", "user:with:colons"]
    users += ["".join(rng.choice("abcdefXYZ0123456789-_") for _ in range(rng.randint(1, 40))) for _ in range(2000)]
    for partitions in (1, 2, 3, 4, 24, 256):
        every = list(range(partitions))
        for user in users:
            key = user.encode()
            by_kafka_python = (kafka_murmur2(key) & 0x7FFFFFFF) % partitions  # its DefaultPartitioner's formula
            assert user_partition(user, partitions) == by_kafka_python == AiokafkaPartitioner()(key, every, every)


def test_the_rule_deals_partition_p_to_shard_p_mod_s():
    layout = ShardLayout.by_rule(8, 4)
    assert layout.partitions_of(1) == [1, 5]
    assert [layout.shard_of_partition(p) for p in range(8)] == [0, 1, 2, 3, 0, 1, 2, 3]
    users = [f"user-{n}" for n in range(400)]
    assert all(layout.shard_of_user(u) == user_partition(u, 8) % 4 for u in users)
    assert {layout.shard_of_user(u) for u in users} == {0, 1, 2, 3}


@pytest.mark.parametrize("partitions,shards,says", [(4, 3, r"divisor of 4 \(1, 2, 4\)"), (2, 4, "divisor of 2"),
                                                    (4, 0, "at least 1")])
def test_shards_that_do_not_divide_the_partitions_are_refused(partitions, shards, says):
    with pytest.raises(ConfigError, match=says):
        ShardLayout.by_rule(partitions, shards)


def test_a_written_layout_holds_every_partition_once():
    layout = ShardLayout.written("0, 3;1,2", 4)
    assert layout.owner == (0, 1, 1, 0) and layout.shards == 2
    with pytest.raises(ConfigError, match="partition 4, which does not exist"):
        ShardLayout.written("0,1;2,4", 4)
    with pytest.raises(ConfigError, match="twice"):
        ShardLayout.written("0,1;1,2,3", 4)
    with pytest.raises(ConfigError, match=r"leaves partitions \[3\]"):
        ShardLayout.written("0,1;2", 4)
    with pytest.raises(ConfigError, match="not a partition number"):
        ShardLayout.written("0,1;;2,3", 4)


def test_the_config_names_this_servers_shard_within_the_layout():
    cfg = load_config("test", env={}, overrides={"kafka.partitions": 4, "serving.shards": 2, "serving.shard": 1})
    assert shard_layout(cfg).partitions_of(cfg.serving.shard) == [1, 3]
    with pytest.raises(ConfigError, match="serving.shard is 2"):
        shard_layout(load_config("test", env={}, overrides={"serving.shards": 2, "serving.shard": 2}))
    with pytest.raises(ConfigError, match="describes 2 shards but serving.shards is 1"):
        shard_layout(load_config("test", env={}, overrides={"serving.shard_partitions": "0;1"}))
    written = load_config("test", env={}, overrides={"serving.shards": 2, "serving.shard_partitions": "1;0"})
    assert shard_layout(written).partitions_of(0) == [1]


def test_a_servers_share_is_checked_against_the_topic_it_reads():
    share = PartitionShare((1, 3), of=4)
    assert share.pick("changelog", [0, 1, 2, 3]) == [1, 3]
    with pytest.raises(TopicLayoutMismatch, match="has 2 partitions but kafka.partitions is 4"):
        share.pick("changelog", [0, 1])  # clients would hash users over 4 partitions, the workers wrote 2
    with pytest.raises(TopicLayoutMismatch, match=r"no partition \[3\]"):
        share.pick("changelog", [0, 1, 2, 5])
