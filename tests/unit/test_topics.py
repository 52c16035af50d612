"""The topic plan (pure): partitions from stream.topics, compaction and replication from the kafka config."""

from __future__ import annotations

import pytest

from infra.topics import TopicSpec, described_topic_configs, compacted_topics, config_drift, min_insync, topic_specs
from stream.topics import changelog_topic, topic_plan
from xdm.config import load_config
from xdm.errors import ConfigError


def _by_name(cfg) -> dict[str, TopicSpec]:
    return {s.name: s for s in topic_specs(cfg)}


def test_the_embedded_broker_gets_no_topic_configs_at_all():
    cfg = load_config("local", env={})
    specs = topic_specs(cfg)
    assert {s.name: s.partitions for s in specs} == topic_plan(cfg)
    assert all(s.replication == 1 and s.configs == {} for s in specs)  # tansu: no compaction, one replica


def test_compaction_covers_keyed_state_and_leaves_history_topics_to_time_based_deletion():
    cfg = load_config("local", env={}, overrides={"kafka.compaction": "true"})
    specs = _by_name(cfg)
    k = cfg.kafka
    state = {changelog_topic(cfg), k.items_topic, k.users_topic, k.versions_topic}
    assert compacted_topics(cfg) == state
    for name in state:
        assert specs[name].configs["cleanup.policy"] == "compact", name
    for name in (k.clicks_topic, k.impressions_topic, k.samples_topic, k.dlq_topic):
        assert "cleanup.policy" not in specs[name].configs, name


def test_cluster_settings_replicate_every_topic_with_one_broker_loss_tolerated():
    cfg = load_config("cluster", env={"XDM_KAFKA__COMPACTION": "true"})
    specs = topic_specs(cfg)
    assert {s.replication for s in specs} == {3}
    assert {s.configs["min.insync.replicas"] for s in specs} == {"2"}
    assert _by_name(cfg)[changelog_topic(cfg)].partitions == 24
    assert _by_name(cfg)[cfg.kafka.dlq_topic].partitions == 1


@pytest.mark.parametrize("replication, configured, expected", [(1, 0, 1), (2, 0, 1), (3, 0, 2), (5, 0, 4), (3, 3, 3)])
def test_min_insync_replicas_defaults_to_replication_minus_one(replication, configured, expected):
    cfg = load_config("local", env={}, overrides={"kafka.replication": str(replication),
                                                  "kafka.min_insync_replicas": str(configured)})
    assert min_insync(cfg) == expected


@pytest.mark.parametrize("overrides, message", [
    ({"kafka.replication": "0"}, "kafka.replication"),
    ({"kafka.replication": "2", "kafka.min_insync_replicas": "3"}, "min_insync_replicas"),
])
def test_impossible_replication_settings_fail_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("local", env={}, overrides=overrides)


def test_the_exactly_once_switch_is_off_unless_asked_for():
    assert load_config("cluster", env={}).kafka.exactly_once is False
    assert load_config("cluster", env={"XDM_KAFKA__EXACTLY_ONCE": "true"}).kafka.exactly_once is True


def test_drift_names_only_the_planned_configs_an_existing_topic_lacks():
    spec = TopicSpec("t", 4, 3, {"cleanup.policy": "compact", "min.insync.replicas": "2"})
    assert config_drift(spec, {"cleanup.policy": "delete", "min.insync.replicas": "2", "retention.ms": "1"}) == {
        "cleanup.policy": "compact"}
    assert config_drift(spec, {"cleanup.policy": "compact", "min.insync.replicas": "2"}) == {}


def test_described_configs_flatten_to_topic_key_value():
    described = {"topic": {"t1": {"cleanup.policy": {"value": "compact", "read_only": False}},
                           "t2": {"min.insync.replicas": {"value": 2}}}}
    assert described_topic_configs(described) == {"t1": {"cleanup.policy": "compact"}, "t2": {"min.insync.replicas": "2"}}
