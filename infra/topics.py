"""Create every topic with its partition count, replication and cleanup policy before any worker starts.

A topic auto-created by the broker gets its default partition count (4 on tansu) and Faust then fails
with PartitionsMismatch, so creation is explicit. Names and partition counts come from stream.topics;
this module adds what a real Kafka cluster needs on top (`topic_specs`, pure):

- `kafka.compaction` on: the windows changelog, the item catalogue, the user profiles and the model
  versions are keyed state ("the latest record per key is the truth"), so they get cleanup.policy=compact:
  a new worker or server rebuilds its copy from the latest record per key instead of the whole history,
  and the topics stop growing with time. Event, sample and dead-letter topics keep the broker's time-based
  deletion. Off for the embedded tansu broker, which has no compaction (STACK.md).
- `kafka.replication` > 1: min.insync.replicas = replication - 1 unless set, so an acks=all write
  survives the loss of one broker and is never acknowledged by one broker alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient
from kafka.errors import TopicAlreadyExistsError

from stream.topics import changelog_topic, topic_plan
from xdm.client_security import kafka_client_kwargs
from xdm.config import Config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TopicSpec:
    """One topic as it must exist on the broker."""

    name: str
    partitions: int
    replication: int
    configs: dict[str, str] = field(default_factory=dict)  # topic-level Kafka configs, e.g. cleanup.policy


def compacted_topics(cfg: Config) -> set[str]:
    """Topics whose records are the latest value of their key (state, not history)."""
    k = cfg.kafka
    return {changelog_topic(cfg), k.items_topic, k.users_topic, k.versions_topic}


def min_insync(cfg: Config) -> int:
    """min.insync.replicas: configured, else replication - 1, at least 1."""
    k = cfg.kafka
    return k.min_insync_replicas or max(1, k.replication - 1)


def topic_specs(cfg: Config) -> list[TopicSpec]:
    """The full plan: every topic with partitions, replication and topic configs (pure)."""
    k = cfg.kafka
    compacted = compacted_topics(cfg) if k.compaction else set()
    specs = []
    for name, partitions in topic_plan(cfg).items():
        configs: dict[str, str] = {}
        if name in compacted:
            configs["cleanup.policy"] = "compact"
        if k.replication > 1:
            configs["min.insync.replicas"] = str(min_insync(cfg))
        specs.append(TopicSpec(name, partitions, k.replication, configs))
    return specs


def config_drift(spec: TopicSpec, current: dict[str, str]) -> dict[str, str]:
    """The configs of `spec` that an existing topic does not have (key -> wanted value)."""
    return {key: value for key, value in spec.configs.items() if current.get(key) != value}


def ensure_topics(cfg: Config) -> dict[str, int]:
    """Create missing topics and bring existing ones to the planned configs; returns name -> partitions.

    Existing topics with a different partition count raise (they would break the co-partitioned joins);
    a planned config an existing topic lacks (say compaction switched on later) is set incrementally.
    """
    specs = topic_specs(cfg)
    admin = KafkaAdminClient(**kafka_client_kwargs(cfg.kafka, "kafka-python"), request_timeout_ms=10_000)
    try:
        existing = set(admin.list_topics())
        missing = {s.name: _create_options(s) for s in specs if s.name not in existing}
        if missing:
            try:
                admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass  # another process created them between list and create
        _check_partitions(admin, specs)
        _align_configs(admin, [s for s in specs if s.name in existing and s.configs])
    finally:
        admin.close()
    log.info("topics ready", extra={"topics": len(specs), "topics_created": len(missing),
                                    "compaction": cfg.kafka.compaction, "replication": cfg.kafka.replication})
    return {s.name: s.partitions for s in specs}


def _create_options(spec: TopicSpec) -> dict:
    options: dict = {"num_partitions": spec.partitions, "replication_factor": spec.replication}
    if spec.configs:  # tansu gets none: it is always created without topic configs
        options["configs"] = dict(spec.configs)
    return options


def _check_partitions(admin: KafkaAdminClient, specs: list[TopicSpec]) -> None:
    wanted = {s.name: s.partitions for s in specs}
    for desc in admin.describe_topics(list(wanted)):
        name, have = desc["name"], len(desc["partitions"])
        if have != wanted[name]:
            raise RuntimeError(
                f"topic {name} has {have} partitions but the config says {wanted[name]}; "
                "delete it or set kafka.partitions to match"
            )


def _align_configs(admin: KafkaAdminClient, specs: list[TopicSpec]) -> None:
    if not specs:
        return
    # No key filter: tansu drops the connection on a filtered DescribeConfigs; every value comes back instead.
    resources = [ConfigResource(ConfigResourceType.TOPIC, s.name) for s in specs]
    described = admin.describe_configs(resources, config_filter="all")
    current = described_topic_configs(described)
    changes = []
    for spec in specs:
        drift = config_drift(spec, current.get(spec.name, {}))
        if drift:
            log.warning("topic configs differ from the plan; setting them", extra={"topic": spec.name, "set": drift})
            changes.append(ConfigResource(ConfigResourceType.TOPIC, spec.name, configs=drift))
    if not changes:
        return
    # IncrementalAlterConfigs where the broker has it, so other keys stay. The broker validates the keys;
    # the client's own pre-check asks for "dynamic" configs, which tansu does not list.
    results = admin.alter_configs(changes, raise_on_unknown=False)
    failed = {name: result for name, result in results.get("topic", {}).items() if result != "OK"}
    if failed:
        raise RuntimeError(f"could not set topic configs: {failed}; set them with kafka-configs.sh --alter")


def described_topic_configs(described) -> dict[str, dict[str, str]]:
    """Flatten describe_configs' answer to topic -> {key: value} (its shape differs across versions)."""
    out: dict[str, dict[str, str]] = {}
    by_type = described if isinstance(described, dict) else {}
    for resources in by_type.values():
        for name, entries in (resources or {}).items():
            if isinstance(entries, dict):
                out[name] = {key: str(_value(entry)) for key, entry in entries.items()}
    return out


def _value(entry) -> object:
    return entry.get("value") if isinstance(entry, dict) else entry
