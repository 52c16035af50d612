"""Names and partition counts of every topic the system reads or writes (pure; creation is infra's job).

Events, samples and the windows changelog share one partition count: impressions and clicks are keyed by
user id and must be co-partitioned with the table that holds that user's windows.
"""

from __future__ import annotations

from xdm.config import Config

WINDOWS_TABLE = "windows"


def changelog_topic(cfg: Config) -> str:
    """Faust names a table's changelog <app_id>-<table>-changelog."""
    return f"{cfg.stream.app_id}-{WINDOWS_TABLE}-changelog"


def topic_plan(cfg: Config) -> dict[str, int]:
    """Topic name -> partitions."""
    k = cfg.kafka
    keyed = [k.clicks_topic, k.impressions_topic, k.samples_topic, changelog_topic(cfg)]
    plan = {name: k.partitions for name in keyed}
    plan.update({k.items_topic: k.partitions, k.users_topic: k.partitions, k.dlq_topic: 1, k.versions_topic: 1})
    return plan
