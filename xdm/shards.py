"""Which Recall shard holds a user: user -> changelog partition -> shard, the one rule servers and clients share.

A user's windows live in the changelog partition the workers wrote them to. The events are produced keyed
by user id (replay/producer.py, kafka-python), whose default partitioner puts a keyed record in partition
`toPositive(murmur2(key)) % partitions`, as Kafka's Java client does and as aiokafka (Faust's producer)
does too. Faust writes a table row's changelog record to the partition of the event being processed
(stream/updater.py makes each user's own record the current event), so the windows changelog is
co-partitioned with the events: the user's changelog partition is that same hash of the user id's UTF-8
bytes over the same partition count (kafka.partitions), computed with kafka-python's own murmur2.
tests/unit/test_shards.py checks the formula against aiokafka's partitioner;
tests/integration/test_sharded_serving.py checks it against where a real worker put users.

Partitions are dealt to shards by a rule, partition p to shard p mod S (serving.shards), or by an explicit
layout (serving.shard_partitions, "0,2;1,3": shard 0 holds partitions 0 and 2, shard 1 holds 1 and 3).
Servers mirror only their shard's partitions; clients route each call to the owning shard. The rule
needs S to divide the partition count, so every shard holds as many partitions (and about as many users);
an uneven split is possible only by writing the layout out.
"""

from __future__ import annotations

from dataclasses import dataclass

from kafka.partitioner.default import murmur2  # the producers' own hash: a copy could drift from it

from xdm.config import Config
from xdm.errors import ConfigError


def user_partition(user_id: str, partitions: int) -> int:
    """The partition the default partitioner gives a record keyed by `user_id` (Kafka's toPositive: & 0x7fffffff)."""
    return (murmur2(user_id.encode()) & 0x7FFFFFFF) % partitions


@dataclass(frozen=True)
class ShardLayout:
    """Partition -> shard for a topic of `len(owner)` partitions dealt to `shards` shards."""

    owner: tuple[int, ...]  # owner[p]: the shard that holds partition p
    shards: int

    @property
    def partitions(self) -> int:
        return len(self.owner)

    def partitions_of(self, shard: int) -> list[int]:
        return [p for p, s in enumerate(self.owner) if s == shard]

    def shard_of_partition(self, partition: int) -> int:
        return self.owner[partition]

    def shard_of_user(self, user_id: str) -> int:
        return self.owner[user_partition(user_id, self.partitions)]

    @classmethod
    def by_rule(cls, partitions: int, shards: int) -> ShardLayout:
        """Partition p to shard p mod shards; shards must divide partitions (every shard as big)."""
        if shards < 1:
            raise ConfigError(f"serving.shards is {shards}; it must be at least 1")
        if partitions % shards:
            divisors = [d for d in range(1, partitions + 1) if partitions % d == 0]
            raise ConfigError(f"serving.shards is {shards} but the changelog has {partitions} partitions "
                              f"(kafka.partitions): use a divisor of {partitions} ({', '.join(map(str, divisors))}) "
                              "so every shard holds as many partitions, or write the layout in serving.shard_partitions")
        return cls(tuple(p % shards for p in range(partitions)), shards)

    @classmethod
    def written(cls, text: str, partitions: int) -> ShardLayout:
        """The layout "0,2;1,3" (shard s holds the s-th ;-separated list): every partition exactly once."""
        owner: dict[int, int] = {}
        lists = text.split(";")
        for shard, listed in enumerate(lists):
            for word in listed.split(","):
                partition = _partition_number(word, partitions)
                if partition in owner:
                    raise ConfigError(f"serving.shard_partitions lists partition {partition} twice "
                                      f"(shards {owner[partition]} and {shard})")
                owner[partition] = shard
        missing = sorted(set(range(partitions)) - set(owner))
        if missing:
            raise ConfigError(f"serving.shard_partitions leaves partitions {missing} to no shard; the changelog "
                              f"has {partitions} (kafka.partitions), each must belong to one shard")
        return cls(tuple(owner[p] for p in range(partitions)), len(lists))


def _partition_number(word: str, partitions: int) -> int:
    try:
        partition = int(word.strip())
    except ValueError:
        raise ConfigError(f"serving.shard_partitions: {word.strip()!r} is not a partition number "
                          "(write the layout as \"0,2;1,3\")") from None
    if not 0 <= partition < partitions:
        raise ConfigError(f"serving.shard_partitions lists partition {partition}, which does not exist: the "
                          f"changelog has partitions 0..{partitions - 1} (kafka.partitions = {partitions})")
    return partition


def shard_layout(cfg: Config) -> ShardLayout:
    """The layout the config describes: kafka.partitions dealt to serving.shards shards, by the rule or
    as serving.shard_partitions writes it; serving.shard (this server's) is checked against it."""
    sc = cfg.serving
    if sc.shard_partitions:
        layout = ShardLayout.written(sc.shard_partitions, cfg.kafka.partitions)
        if layout.shards != sc.shards:
            raise ConfigError(f"serving.shard_partitions describes {layout.shards} shards but serving.shards is "
                              f"{sc.shards}; set both to the same number")
    else:
        layout = ShardLayout.by_rule(cfg.kafka.partitions, sc.shards)
    if not 0 <= sc.shard < layout.shards:
        raise ConfigError(f"serving.shard is {sc.shard}; with serving.shards = {layout.shards} it must be "
                          f"0..{layout.shards - 1}")
    return layout
