"""The online learner on the real broker and Milvus Lite: exact resume after kill -9, dead letters, and
versions that replace each other atomically."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from conftest import samples_from_log
from infra.processes import start_process, wait_until
from infra.stack import config_env
from learner import vector_store
from learner.checkpoint import load_checkpoint
from learner.model_store import load_tower, read_latest
from learner.online import OnlineLearner
from learner.publish import Publisher
from serving.user_vectors import user_vectors
from stream.windows import rows_of
from stream.wire import SampleTimes, encode_sample
from xdm.config import apply_overrides
from xdm.v1 import events_pb2

STEPS = 12


def _produce_samples(cfg, samples, partition: int = 0) -> None:
    producer = KafkaProducer(bootstrap_servers=cfg.kafka.bootstrap, acks="all")
    for s in samples:
        producer.send(cfg.kafka.samples_topic, key=s.user_id.encode(), value=encode_sample(s, SampleTimes()),
                      partition=partition)
    producer.flush()
    producer.close()


def _learner_cfg(stack, name: str):
    return apply_overrides(stack.cfg, {
        "learner.checkpoint_dir": str(stack.root / f"ckpt-{name}"),
        "learner.batch_size": 16,
        "learner.max_wait_ms": 600_000,  # batches always fill up: boundaries do not depend on timing
        "learner.checkpoint_every_steps": 2,
        "learner.publish_every_steps": 10**6,
        "learner.publish_every_s": 1e9,
        "learner.evict_after_ms": 0,
    })


def _start_learner(stack, cfg, arm: str):
    argv = [*_xdm_argv(), "learn", "--arm", arm, "--variant", "xdm", "--max-steps", str(STEPS)]
    return start_process(f"learner-{arm}", argv, stack.root / "logs", env=config_env(cfg))


def _xdm_argv() -> list[str]:
    import sys

    return [sys.executable, "-m", "xdm", "--profile", "test"]


@pytest.mark.timeout(240)
def test_killed_and_resumed_learner_ends_with_the_parameters_of_an_uninterrupted_run(stack, tiny_log):
    samples = samples_from_log(tiny_log, stack.cfg)
    assert len(samples) >= STEPS * 16
    _produce_samples(stack.cfg, samples)

    straight_cfg = _learner_cfg(stack, "straight")
    straight = _start_learner(stack, straight_cfg, "straight")
    assert straight.popen.wait(timeout=180) == 0, straight.log_tail()

    crash_cfg = _learner_cfg(stack, "crash")
    victim = _start_learner(stack, crash_cfg, "crash")

    def checkpointed_a_few_steps() -> bool:
        state = load_checkpoint(crash_cfg.learner.checkpoint_dir, "crash")
        return state is not None and state["trainer"]["steps"] >= 4

    wait_until(checkpointed_a_few_steps, 120, "a checkpoint of the learner that will be killed", interval_s=0.05)
    victim.kill()  # SIGKILL: no shutdown hook runs
    killed_at = load_checkpoint(crash_cfg.learner.checkpoint_dir, "crash")["trainer"]["steps"]
    assert killed_at < STEPS
    resumed = _start_learner(stack, crash_cfg, "crash")
    assert resumed.popen.wait(timeout=180) == 0, resumed.log_tail()

    a = load_checkpoint(straight_cfg.learner.checkpoint_dir, "straight")
    b = load_checkpoint(crash_cfg.learner.checkpoint_dir, "crash")
    assert a["trainer"]["steps"] == b["trainer"]["steps"] == STEPS
    assert a["offsets"] == b["offsets"]
    for key, value in a["trainer"]["model"].items():
        assert torch.equal(value, b["trainer"]["model"][key]), key


@pytest.mark.timeout(120)
def test_samples_a_restarted_worker_emits_again_are_trained_on_once(stack, tiny_log):
    """A worker killed before committing emits its last samples again, with the same ids."""
    cfg = apply_overrides(_learner_cfg(stack, "dup"), {"learner.max_wait_ms": 200})
    first = samples_from_log(tiny_log, cfg)[:48]
    _produce_samples(cfg, first)
    _produce_samples(cfg, first[32:])  # the re-emitted tail, as after a worker restart
    learner = OnlineLearner(cfg, "dup", "xdm")
    status = learner.run(idle_exit_s=3.0)
    assert status.samples == 48 and status.duplicates == 16

    # a restarted learner remembers what it took: the same tail once more is skipped too
    _produce_samples(cfg, first[32:])
    again = OnlineLearner(cfg, "dup", "xdm")
    again.restore()
    status = again.run(idle_exit_s=3.0)
    assert status.samples == 0 and status.duplicates == 16


@pytest.mark.timeout(120)
def test_bad_samples_go_to_the_dead_letter_topic_and_training_goes_on(stack, tiny_log):
    cfg = apply_overrides(_learner_cfg(stack, "dlq"), {"learner.max_wait_ms": 200})
    good = samples_from_log(tiny_log, cfg)[:40]
    producer = KafkaProducer(bootstrap_servers=cfg.kafka.bootstrap, acks="all")
    producer.send(cfg.kafka.samples_topic, key=b"u", value=b"\x00\xffnot a protobuf", partition=0)
    no_labels = events_pb2.Sample(sample_id="s", user_id="u", ts_ms=1).SerializeToString()
    producer.send(cfg.kafka.samples_topic, key=b"u", value=no_labels, partition=0)
    producer.flush()
    _produce_samples(cfg, good)

    learner = OnlineLearner(cfg, "dlq", "xdm")
    status = learner.run(idle_exit_s=3.0)
    assert status.dead_letters == 2
    assert status.samples == 40 and status.steps >= 3

    consumer = KafkaConsumer(bootstrap_servers=cfg.kafka.bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=3000)
    consumer.assign([TopicPartition(cfg.kafka.dlq_topic, 0)])
    letters = [events_pb2.DeadLetter.FromString(r.value) for r in consumer]
    consumer.close()
    reasons = sorted(letter.reason for letter in letters)
    assert len(letters) == 2
    assert reasons[0].startswith("not an xdm.v1.Sample") and reasons[1] == "sample without labels"
    assert all(letter.source_topic == cfg.kafka.samples_topic for letter in letters)


@pytest.mark.timeout(180)
def test_versions_replace_each_other_atomically(stack, tiny_log):
    cfg = apply_overrides(_learner_cfg(stack, "pub"), {"learner.keep_versions": 3})
    learner = OnlineLearner(cfg, "pub", "xdm")
    samples = samples_from_log(tiny_log, cfg)
    learner.trainer.step(samples[:64])
    base = learner.trainer.model.item_out.weight.detach().clone()
    publisher = Publisher(cfg, "pub", "xdm")
    store = cfg.learner.model_store

    def publish(version: int) -> None:
        with torch.no_grad():  # version v's vectors are v * base: a score tells which version answered
            learner.trainer.model.item_out.weight.copy_(base * version)
        publisher.publish(learner.trainer, version)

    publish(1)
    info = read_latest(store, "pub")
    tower = load_tower(store, info.arm, info.version)
    z = user_vectors(tower, [rows_of(samples[0].windows)])
    client = vector_store.connect(cfg.milvus)
    ids, vectors = learner.trainer.item_vectors()
    base_scores = dict(zip(ids, (vectors.numpy() @ z[0]) / 1))  # vectors are v * base at v = 1 now
    hits = vector_store.search(client, info.collection, z, 10, 5.0)[0]
    assert len(hits) == 10 and all(item in base_scores for item, _ in hits)

    mixed, checked = [], 0
    stop = threading.Event()

    def search_loop() -> None:
        nonlocal checked
        reader = vector_store.connect(cfg.milvus)
        while not stop.is_set():
            latest = read_latest(store, "pub")
            try:
                found = vector_store.search(reader, latest.collection, z, 20, 5.0)[0]
            except Exception as exc:  # a dropped collection would show up here
                mixed.append(f"search of v{latest.version} failed: {exc}")
                continue
            for item, score in found:
                if not np.isclose(score, latest.version * base_scores[item], rtol=1e-3, atol=1e-4):
                    mixed.append(f"v{latest.version}: {item} scored {score}")
            checked += 1
        reader.close()

    thread = threading.Thread(target=search_loop)
    thread.start()
    try:
        for version in range(2, 6):
            publish(version)
            time.sleep(0.2)
    finally:
        stop.set()
        thread.join(timeout=30)
    publisher.close()
    assert checked > 5
    assert not mixed, mixed[:5]
    names = sorted(n for n in client.list_collections() if n.startswith("xdm_pub_v"))
    assert names == ["xdm_pub_v3", "xdm_pub_v4", "xdm_pub_v5"]  # older versions dropped after the grace
    client.close()


@pytest.mark.timeout(180)
def test_publish_with_milvus_down_announces_nothing_and_recovers(stack, tiny_log):
    cfg = apply_overrides(_learner_cfg(stack, "down"), {"learner.max_wait_ms": 200, "learner.publish_every_steps": 2,
                                                         "learner.publish_every_s": 0.5})
    samples = samples_from_log(tiny_log, cfg)
    learner = OnlineLearner(cfg, "down", "xdm")
    learner.trainer.step(samples[:32])
    assert learner._publish() and read_latest(cfg.learner.model_store, "down").version == 1

    milvus = stack.by_name("milvus")
    port = int(milvus.address.rsplit(":", 1)[1])
    milvus.stop()
    learner.trainer.step(samples[32:64])
    assert not learner._publish()  # fails, is logged, and announces nothing
    assert read_latest(cfg.learner.model_store, "down").version == 1 and learner.version == 1

    from infra.services import start_milvus

    stack.processes.append(start_milvus(stack.root / "milvus", stack.root / "logs", port=port))
    assert learner._publish()
    latest = read_latest(cfg.learner.model_store, "down")
    assert latest.version == 2 and latest.items == len(learner.trainer.item_vectors()[0])
    learner.publisher.close()


@pytest.mark.timeout(180)
def test_warm_start_from_an_offline_run(stack, tiny_log, tmp_path):
    from learner.checkpoint import save_checkpoint

    cfg = _learner_cfg(stack, "warm")
    samples = samples_from_log(tiny_log, cfg)
    offline = OnlineLearner(cfg, "offline-source", "xdm")
    for i in range(0, 96, 32):
        offline.trainer.step(samples[i:i + 32])
    run_dir = tmp_path / "run"
    save_checkpoint(str(run_dir), "offline", {"trainer": offline.trainer.state_dict()})

    warm = OnlineLearner(cfg, "warm", "xdm")
    warm.restore(str(run_dir))
    assert warm.trainer.steps == 3
    for key, value in offline.trainer.model.state_dict().items():
        assert torch.equal(value, warm.trainer.model.state_dict()[key]), key
    with pytest.raises(FileNotFoundError, match="xdm train"):
        OnlineLearner(_learner_cfg(stack, "cold"), "cold", "xdm").restore(str(tmp_path / "nothing-here"))
