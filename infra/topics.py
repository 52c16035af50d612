"""Create every topic with its partition count before any worker starts.

A topic auto-created by the broker gets its default partition count (4 on tansu) and Faust then fails
with PartitionsMismatch, so creation is explicit; the plan itself lives in stream.topics.
"""

from __future__ import annotations

import logging

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

from stream.topics import topic_plan
from xdm.config import Config

log = logging.getLogger(__name__)


def ensure_topics(cfg: Config) -> dict[str, int]:
    """Create missing topics; existing ones with a different partition count raise (they would break joins)."""
    plan = topic_plan(cfg)
    admin = KafkaAdminClient(bootstrap_servers=cfg.kafka.bootstrap, request_timeout_ms=10_000)
    try:
        existing = set(admin.list_topics())
        missing = [NewTopic(name, n, cfg.kafka.replication) for name, n in plan.items() if name not in existing]
        if missing:
            try:
                admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass  # another process created them between list and create
        _check_partitions(admin, plan)
    finally:
        admin.close()
    log.info("topics ready", extra={"topics": len(plan)})
    return plan


def _check_partitions(admin: KafkaAdminClient, plan: dict[str, int]) -> None:
    for desc in admin.describe_topics(list(plan)):
        name, have = desc["name"], len(desc["partitions"])
        if have != plan[name]:
            raise RuntimeError(
                f"topic {name} has {have} partitions but the config says {plan[name]}; "
                "delete it or set kafka.partitions to match"
            )
