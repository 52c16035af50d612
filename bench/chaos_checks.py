"""The invariants a chaos run (bench/chaos.py) checks once the feed has stopped and every process is up.

  windows   the windows table as serving reads it (its changelog) equals the pure window rules applied to
            the events fed, in time order (stream/expected.py): no event lost or applied twice;
  samples   the samples topic holds exactly the samples those rules complete (a sample emitted again after
            a worker crash is allowed: at least once), and the learner's record of what its model was
            trained on (learner/trained_ids.py, kept in step with its checkpoints) holds each exactly once;
  versions  the versions topic announces strictly increasing version numbers, LATEST names the last one,
            and each kept version's user tower, built as a server builds it, gives exactly the item
            vectors its Milvus collection holds.
Each check returns a dict with "ok" and what a reader needs to see where it failed.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition

from infra.stack import Stack
from learner.model_store import VersionInfo, decode_announcement, read_latest
from learner.trained_ids import read_trained_ids, trained_ids_path
from stream.expected import ExpectedRun, describe_difference, differing_users
from stream.mirror import TopicMirror
from stream.state_codec import decode_state
from stream.topics import changelog_topic
from stream.true_ends import reported_and_true_ends
from stream.wire import decode_sample
from xdm.config import Config, apply_overrides

SHOWN = 20  # ids listed per finding; the counts are complete
READ_TIMEOUT_S = 60.0


def check_windows(cfg: Config, want: ExpectedRun, timeout_s: float) -> dict:
    """Wait until the changelog holds the rules' windows for every user (the workers catch up after the
    feed stops), or report who differs when timeout_s is spent."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = asyncio.run(_changelog_states(cfg))
        bad = differing_users(want.states, got, cfg.windows)
        if not bad or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    examples = {user: describe_difference(want.states.get(user), got.get(user), cfg.windows) for user in bad[:3]}
    return {"ok": not bad, "users": len(want.states), "events_applied_by_rules": want.applied,
            "users_differing": len(bad), "examples": examples}


async def _changelog_states(cfg: Config) -> dict:
    mirror = TopicMirror(cfg.kafka, changelog_topic(cfg), bytes, name="chaos-check")
    await mirror.start()
    try:
        await mirror.wait_caught_up(READ_TIMEOUT_S)
    finally:
        await mirror.stop()
    return {user: decode_state(raw) for user, raw in mirror.values.items()}


def check_samples(stack: Stack, arm: str, want: ExpectedRun, timeout_s: float) -> dict:
    """Emitted = the rules' samples; trained = emitted, each once. Stops the learner with SIGTERM (it
    checkpoints) once its record covers every emitted sample, or when timeout_s is spent."""
    cfg = stack.cfg
    deadline = time.monotonic() + timeout_s
    emitted = _emitted_samples(cfg, deadline)
    unique = set(emitted)
    record = trained_ids_path(cfg.learner.checkpoint_dir, arm)
    while not unique <= set(read_trained_ids(record)) and time.monotonic() < deadline:
        time.sleep(1.0)
    stack.by_name(f"learner-{arm}").stop()
    trained = Counter(read_trained_ids(record))
    lost, unexpected = want.sample_ids - unique, unique - want.sample_ids
    twice = sorted(sid for sid, n in trained.items() if n > 1)
    never, not_emitted = unique - set(trained), set(trained) - unique
    return {"ok": not (lost or unexpected or twice or never or not_emitted),
            "expected": len(want.sample_ids), "emitted_records": len(emitted), "emitted_unique": len(unique),
            "lost": len(lost), "lost_ids": sorted(lost)[:SHOWN],
            "unexpected": len(unexpected), "unexpected_ids": sorted(unexpected)[:SHOWN],
            "trained_records": sum(trained.values()),
            "trained_twice": len(twice), "trained_twice_ids": twice[:SHOWN],
            "never_trained": len(never), "never_trained_ids": sorted(never)[:SHOWN],
            "trained_not_emitted": len(not_emitted), "trained_not_emitted_ids": sorted(not_emitted)[:SHOWN]}


def _emitted_samples(cfg: Config, deadline: float, quiet_s: float = 2.0) -> list[str]:
    """Sample ids of the samples topic once two reads quiet_s apart agree (the windows can be complete
    a moment before the worker's last samples reach the broker)."""
    read = [decode_sample(v)[0].sample_id for v in asyncio.run(read_topic(cfg, cfg.kafka.samples_topic))]
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        again = [decode_sample(v)[0].sample_id for v in asyncio.run(read_topic(cfg, cfg.kafka.samples_topic))]
        if len(again) == len(read):
            return again
        read = again
    return read


def check_versions(cfg: Config, arm: str) -> dict:
    """Announcements strictly increasing, LATEST at the last one, each kept version's tower = its vectors."""
    announced = [decode_announcement(v) for v in asyncio.run(read_topic(cfg, cfg.kafka.versions_topic))]
    announced = [a for a in announced if a.arm == arm]
    numbers = [a.version for a in announced]
    repeated = sorted(v for v, n in Counter(numbers).items() if n > 1)
    backwards = [[a, b] for a, b in zip(numbers, numbers[1:]) if b <= a]
    latest = read_latest(cfg.learner.model_store, arm)
    latest_ok = bool(announced) and latest == announced[-1]
    kept = sorted({a.version: a for a in announced}.items())[-cfg.learner.keep_versions:]
    towers = {str(version): tower_matches_vectors(cfg, info) for version, info in kept}
    mismatched = [version for version, result in towers.items() if result != "match"]
    return {"ok": bool(announced) and not repeated and not backwards and latest_ok and not mismatched,
            "announcements": len(announced), "first": numbers[0] if numbers else None,
            "last": numbers[-1] if numbers else None, "repeated": repeated, "not_increasing": backwards[:SHOWN],
            "latest": latest.version if latest else None, "latest_is_last_announced": latest_ok,
            "kept_versions_checked": towers, "mismatched": mismatched}


def tower_matches_vectors(cfg: Config, info: VersionInfo) -> str:
    """'match' when the version's user tower, built as a server builds it, gives exactly the item vectors
    that the version's Milvus collection holds (what the server searches); else what differs."""
    from serving.compute import build_tower

    as_served = apply_overrides(cfg, {"serving.trace_tower": False, "serving.local_index": "exact"})
    try:
        tower = build_tower(as_served, info)
    except Exception as exc:  # a missing file or collection is a finding, not a crash of the check
        return f"cannot build: {type(exc).__name__}: {exc}"[:300]
    weights = tower.model.item_vectors().detach().numpy()
    rows = [row for row in tower.vocab.live_items() if row < weights.shape[0]]
    from_tower = {tower.vocab.key("item", row): weights[row] for row in rows}
    from_milvus = dict(zip(tower.index.ids, tower.index.matrix.numpy()))
    if set(from_tower) != set(from_milvus):
        return f"items differ: {len(set(from_tower) ^ set(from_milvus))} in only one of {len(from_milvus)}"
    worst = max((float(np.abs(from_tower[i] - from_milvus[i]).max()) for i in from_milvus), default=0.0)
    return "match" if worst <= 1e-5 else f"vectors differ by up to {worst:.3g}"


async def read_topic(cfg: Config, topic: str) -> list[bytes]:
    """Every record value of a topic, each partition in offset order, read to its true end (the embedded
    broker can report an end short of its last batch: stream/true_ends.py)."""
    ends = await reported_and_true_ends(cfg.kafka, topic)
    consumer = AIOKafkaConsumer(bootstrap_servers=cfg.kafka.bootstrap, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(ends)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        out: list[tuple[int, int, bytes]] = []  # (partition, offset, value)
        deadline = time.monotonic() + READ_TIMEOUT_S
        while [tp for tp in tps if await consumer.position(tp) < ends[tp.partition][1]]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic} not read to its end in {READ_TIMEOUT_S:.0f} s")
            for records in (await consumer.getmany(timeout_ms=500)).values():
                out.extend((r.partition, r.offset, r.value) for r in records)
    finally:
        await consumer.stop()
    return [value for _, _, value in sorted(out, key=lambda r: r[:2])]
