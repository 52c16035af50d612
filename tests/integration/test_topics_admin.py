"""ensure_topics against a real broker: planned topic configs are created, and set on existing topics.

tansu stores topic configs without acting on them (it never compacts), so this checks the admin calls;
compaction itself is Kafka's job, exercised by the compose stack.
"""

from __future__ import annotations

import pytest
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

from infra.services import start_broker
from infra.topics import described_topic_configs, ensure_topics
from stream.topics import changelog_topic
from xdm.config import load_config


@pytest.mark.timeout(90)
def test_compaction_is_created_and_set_on_a_topic_that_existed_without_it(tmp_path):
    broker = start_broker(tmp_path / "logs")
    try:
        cfg = load_config("test", env={}, overrides={"kafka.bootstrap": broker.address})
        admin = KafkaAdminClient(bootstrap_servers=broker.address)
        admin.create_topics({cfg.kafka.items_topic: {"num_partitions": cfg.kafka.partitions, "replication_factor": 1}})
        ensure_topics(cfg)  # compaction off: the existing topic is left alone, nothing gets configs
        assert _policy(admin, cfg.kafka.items_topic) != "compact"

        plan = ensure_topics(load_config("test", env={}, overrides={"kafka.bootstrap": broker.address,
                                                                      "kafka.compaction": "true"}))
        assert plan[changelog_topic(cfg)] == cfg.kafka.partitions
        for topic in (changelog_topic(cfg), cfg.kafka.items_topic, cfg.kafka.users_topic, cfg.kafka.versions_topic):
            assert _policy(admin, topic) == "compact", topic
        assert _policy(admin, cfg.kafka.clicks_topic) != "compact"
        admin.close()
    finally:
        broker.stop()


def _policy(admin: KafkaAdminClient, topic: str) -> str | None:
    described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)], config_filter="all")
    return described_topic_configs(described).get(topic, {}).get("cleanup.policy")
