"""Version numbers of a publishing learner on the real broker and Milvus Lite: they only grow across a
kill -9 and restart, a published version's collection and tower are never rewritten, each tower answers
with its own item vectors; and a Milvus that stops answering (SIGSTOP) stalls neither training nor, once
it answers again, the versions that follow."""

from __future__ import annotations

import hashlib
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from prometheus_client import REGISTRY

from conftest import samples_from_log
from infra.processes import start_process, wait_until
from infra.stack import config_env
from learner import model_store, vector_store
from learner.checkpoint import load_checkpoint
from learner.model_store import decode_announcement, load_tower, read_latest, tower_path
from learner.online import OnlineLearner
from learner.publish import take_snapshot
from serving.user_vectors import user_vectors
from stream.windows import rows_of
from stream.wire import SampleTimes, encode_sample
from xdm.config import Config, apply_overrides

PROBE_USERS = 4


def _produce(cfg, samples) -> None:
    producer = KafkaProducer(bootstrap_servers=cfg.kafka.bootstrap, acks="all")
    for s in samples:
        producer.send(cfg.kafka.samples_topic, key=s.user_id.encode(), value=encode_sample(s, SampleTimes()),
                      partition=0)
    producer.flush()
    producer.close()


def _publishing_cfg(stack, arm: str, **extra):
    return apply_overrides(stack.cfg, {
        "learner.checkpoint_dir": str(stack.root / f"ckpt-{arm}"),
        "learner.batch_size": 16,
        "learner.max_wait_ms": 200,
        "learner.checkpoint_every_steps": 7,  # publishes every 3 steps: a checkpoint lags the newest version
        "learner.publish_every_steps": 3,
        "learner.publish_every_s": 1e9,
        "learner.keep_versions": 1000,  # every version stays, to be checked at the end
        "learner.evict_after_ms": 0,
        **extra,
    })


@dataclass
class Seen:
    """One announced version as a server saw it when the announcement arrived."""

    version: int
    ids: list[str]
    vectors: np.ndarray
    tower_sha: str


@dataclass
class Watcher:
    """Reads the versions topic like a server and, for each announcement, that version's item vectors and
    tower file at once; also samples LATEST, which must never move back."""

    cfg: Config
    arm: str
    seen: list[Seen] = field(default_factory=list)
    latest: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        cfg = self.cfg
        consumer = KafkaConsumer(bootstrap_servers=cfg.kafka.bootstrap, enable_auto_commit=False)
        parts = [TopicPartition(cfg.kafka.versions_topic, p)
                 for p in sorted(consumer.partitions_for_topic(cfg.kafka.versions_topic) or [])]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        client = vector_store.connect(cfg.milvus)
        try:
            while not self.stop.is_set():
                latest = read_latest(cfg.learner.model_store, self.arm)
                if latest is not None and (not self.latest or self.latest[-1] != latest.version):
                    self.latest.append(latest.version)
                for records in consumer.poll(timeout_ms=50).values():
                    for record in records:
                        self._take(client, decode_announcement(record.value))
        except Exception as exc:  # reported by the test, never swallowed
            self.errors.append(repr(exc))
        finally:
            client.close()
            consumer.close()

    def _take(self, client, info) -> None:
        if info.arm != self.arm:
            return
        ids, vectors = vector_store.read_all(client, info.collection, timeout_s=10)
        self.seen.append(Seen(info.version, ids, vectors, _sha(tower_path(self.cfg.learner.model_store, self.arm,
                                                                         info.version))))


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check_version(cfg, arm: str, seen: Seen, probes) -> None:
    """Nothing of the version was rewritten since it was announced, and its tower's scores of the probe
    users over the Milvus vectors equal the learner's own scores (the tower's own item vectors)."""
    client = vector_store.connect(cfg.milvus)
    try:
        ids, vectors = vector_store.read_all(client, vector_store.collection_name(cfg.milvus, arm, seen.version),
                                             timeout_s=10)
    finally:
        client.close()
    now = dict(zip(ids, vectors))
    assert sorted(ids) == sorted(seen.ids), f"v{seen.version}: the collection's items changed after its announcement"
    assert all(np.array_equal(now[i], v) for i, v in zip(seen.ids, seen.vectors)), f"v{seen.version}: vectors rewritten"
    assert _sha(tower_path(cfg.learner.model_store, arm, seen.version)) == seen.tower_sha, f"v{seen.version}: tower rewritten"

    tower = load_tower(cfg.learner.model_store, arm, seen.version)
    z = user_vectors(tower, probes)
    rows = [tower.vocab.lookup("item", i) for i in seen.ids]
    own = tower.model.item_vectors().detach().numpy()[rows]
    np.testing.assert_allclose(z @ seen.vectors.T, z @ own.T, rtol=1e-5, atol=1e-5,
                               err_msg=f"v{seen.version}: tower and item vectors of different models")


def _learn(stack, cfg, arm: str, *args: str):
    argv = [sys.executable, "-m", "xdm", "--profile", "test", "learn", "--arm", arm, "--variant", "xdm", *args]
    return start_process(f"learner-{arm}", argv, stack.root / "logs", env=config_env(cfg))


@pytest.mark.timeout(120)
def test_a_published_version_is_never_written_again_and_numbers_skip_every_trace(stack, tiny_log):
    arm = "once"
    cfg = _publishing_cfg(stack, arm)
    store = cfg.learner.model_store
    samples = samples_from_log(tiny_log, cfg)
    learner = OnlineLearner(cfg, arm, "xdm")
    learner.trainer.step(samples[:32])
    first = learner.publisher.publish(learner.trainer, 1)
    client = vector_store.connect(cfg.milvus)
    published = vector_store.read_all(client, first.collection, timeout_s=10)
    tower_sha = _sha(tower_path(store, arm, 1))

    learner.trainer.step(samples[32:64])  # another model, offered under the same number
    with pytest.raises(vector_store.VersionExists, match="never rewritten"):
        learner.publisher.publish(learner.trainer, 1)
    later = take_snapshot(learner.trainer)
    with pytest.raises(FileExistsError, match="never rewritten"):
        model_store.save_tower(store, arm, 1, model_store.tower_payload(later.model, later.vocab, first, "xdm", []))
    ids, vectors = vector_store.read_all(client, first.collection, timeout_s=10)
    assert ids == published[0] and np.array_equal(vectors, published[1]) and _sha(tower_path(store, arm, 1)) == tower_sha

    assert learner.publisher.next_version(1) == 2  # above LATEST
    vector_store.write_version(client, cfg.milvus, arm, 7, later.item_ids, later.vectors)  # a publish that died
    assert learner.publisher.next_version(1) == 8
    model_store.save_tower(store, arm, 9, model_store.tower_payload(later.model, later.vocab, first, "xdm", []))
    assert learner.publisher.next_version(1) == 10
    assert learner.publisher.next_version(12) == 12  # the checkpoint's own floor
    client.close()
    learner.publisher.close()


@pytest.mark.timeout(300)
def test_versions_only_grow_across_a_kill_9_and_every_tower_matches_its_vectors(stack, tiny_log):
    arm = "kv"
    cfg = _publishing_cfg(stack, arm)
    samples = samples_from_log(tiny_log, cfg)
    probes = [rows_of(s.windows) for s in samples[:PROBE_USERS]]
    _produce(cfg, samples[:640])
    watcher = Watcher(cfg, arm)
    watching = threading.Thread(target=watcher.run)
    watching.start()
    try:
        victim = _learn(stack, cfg, arm)

        def checkpoint_behind_latest() -> bool:
            state = load_checkpoint(cfg.learner.checkpoint_dir, arm)
            latest = read_latest(cfg.learner.model_store, arm)
            return state is not None and latest is not None and latest.version >= 3 and state["version"] < latest.version

        wait_until(checkpoint_behind_latest, 150, "a checkpoint older than the newest version", interval_s=0.05)
        victim.kill()  # SIGKILL: no shutdown hook, possibly in the middle of a publish
        at_kill = read_latest(cfg.learner.model_store, arm).version
        assert load_checkpoint(cfg.learner.checkpoint_dir, arm)["version"] < at_kill  # the case that repeated numbers

        _produce(cfg, samples[640:960])
        resumed = _learn(stack, cfg, arm, "--idle-exit-s", "4")
        assert resumed.popen.wait(timeout=180) == 0, resumed.log_tail(40)
        final = read_latest(cfg.learner.model_store, arm).version
        wait_until(lambda: watcher.seen and watcher.seen[-1].version == final, 30, "the last announcement read")
    finally:
        watcher.stop.set()
        watching.join(timeout=30)

    assert not watcher.errors, watcher.errors
    announced = [s.version for s in watcher.seen]
    assert final > at_kill and any(v > at_kill for v in announced), announced  # the resumed learner published
    assert all(a < b for a, b in zip(announced, announced[1:])), f"versions repeated or went back: {announced}"
    assert all(a < b for a, b in zip(watcher.latest, watcher.latest[1:])), f"LATEST went back: {watcher.latest}"
    for seen in watcher.seen:
        _check_version(cfg, arm, seen, probes)


def _failures(arm: str, reason: str) -> float:
    return REGISTRY.get_sample_value("xdm_learner_publish_failures_total", {"arm": arm, "reason": reason}) or 0.0


@pytest.mark.timeout(240)
def test_a_stopped_milvus_stalls_neither_training_nor_later_versions(stack, tiny_log):
    arm = "stall"
    deadline_s = 3.0
    # One Milvus call may wait far longer than a publish may take: the deadline, not the call, ends it.
    cfg = _publishing_cfg(stack, arm, **{"learner.publish_deadline_s": deadline_s, "milvus.call_timeout_s": 30.0})
    samples = samples_from_log(tiny_log, cfg)
    probes = [rows_of(s.windows) for s in samples[:PROBE_USERS]]
    learner = OnlineLearner(cfg, arm, "xdm")
    training = threading.Thread(target=learner.run)
    watcher = Watcher(cfg, arm)
    watching = threading.Thread(target=watcher.run)
    milvus = stack.by_name("milvus")
    _produce(cfg, samples[:96])
    training.start()
    try:
        def all_published() -> bool:
            return (learner.status.samples == 96 and not learner.publishing.busy
                    and learner.schedule.published_steps == learner.trainer.steps)

        wait_until(all_published, 90, "a version of everything produced so far")
        before = learner.version
        abandoned = _failures(arm, "deadline")
        steps = learner.trainer.steps
        os.killpg(milvus.pid, signal.SIGSTOP)
        try:
            stopped_at = time.monotonic()
            _produce(cfg, samples[96:288])
            wait_until(lambda: learner.trainer.steps >= steps + 24, 60, "training steps while Milvus is stopped")
            wait_until(lambda: _failures(arm, "deadline") > abandoned, deadline_s + 10, "an abandoned publish")
            assert time.monotonic() - stopped_at < 60
            assert learner.version == before and training.is_alive()

            client = vector_store.connect(cfg.milvus)  # reading a version's vectors gives up too
            started = time.monotonic()
            with pytest.raises(Exception):
                vector_store.read_all(client, vector_store.collection_name(cfg.milvus, arm, before), timeout_s=1.0)
            assert time.monotonic() - started < 10
            client.close()
        finally:
            os.killpg(milvus.pid, signal.SIGCONT)
        watching.start()
        _produce(cfg, samples[288:384])
        wait_until(lambda: learner.version > before, 60, "a version after Milvus answers again")
        learner.stop()
        training.join(timeout=60)
        assert not training.is_alive()
        newest = learner.version
        wait_until(lambda: watcher.seen and watcher.seen[-1].version == newest, 30, "the last announcement read")
    finally:
        os.killpg(milvus.pid, signal.SIGCONT)
        learner.stop()
        training.join(timeout=60)
        watcher.stop.set()
        if watching.is_alive():
            watching.join(timeout=30)

    assert not watcher.errors, watcher.errors
    announced = [s.version for s in watcher.seen]
    assert all(a < b for a, b in zip(announced, announced[1:])), announced
    assert learner.status.versions == announced, (learner.status.versions, announced)
    for seen in watcher.seen:  # an abandoned attempt's number was not reused by a later version
        _check_version(cfg, arm, seen, probes)
