"""Data-parallel learner on the real broker and Milvus Lite: two CPU processes (gloo) each read one of
the samples topic's two partitions, all-reduce every step, and end with identical parameters; rank 0's
checkpoint covers every sample, its published version is searchable, and a restarted group resumes from
that checkpoint with no sample trained twice."""

from __future__ import annotations

import sys
import zlib

import pytest
import torch
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from conftest import samples_from_log
from infra.processes import free_port, start_process
from infra.stack import config_env
from learner import vector_store
from learner.checkpoint import load_checkpoint
from learner.distributed import partitions_for
from learner.model_store import load_tower, read_latest
from serving.user_vectors import user_vectors
from stream.windows import rows_of
from stream.wire import SampleTimes, encode_sample
from xdm.config import apply_overrides

ARM = "dp"
# One rank as `xdm learn --world-size 2 --rank R` would run it, plus what the test inspects afterwards.
RANK_MAIN = """
import os, sys, torch
from learner.distributed import DistributedLearner, DistributedSettings, process_group, rank_device
from xdm.config import load_config

rank, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
cfg = load_config("test", env=dict(os.environ))
settings = DistributedSettings(world_size=2, rank=rank, master_port=port, timeout_s=120)
with process_group(settings, rank_device(cfg.learner.device, rank)) as comm:
    learner = DistributedLearner(cfg, comm, arm="dp", variant="xdm", record_ids=True)
    learner.restore()
    status = learner.run(idle_exit_s=4.0)
    torch.save({"model": learner.trainer.model.state_dict(), "vocab": learner.trainer.vocab.state_dict(),
                "status": status, "steps": learner.trainer.steps}, out)
"""


def _produce_keyed(cfg, samples) -> None:
    """Samples keyed by user, each user's samples in one partition (what the stream worker does)."""
    producer = KafkaProducer(bootstrap_servers=cfg.kafka.bootstrap, acks="all")
    for s in samples:
        partition = zlib.crc32(s.user_id.encode()) % cfg.kafka.partitions
        producer.send(cfg.kafka.samples_topic, key=s.user_id.encode(), value=encode_sample(s, SampleTimes()),
                      partition=partition)
    producer.flush()
    producer.close()


def _end_offsets(cfg) -> dict[int, int]:
    """Last offset + 1 of each samples partition, by reading to the end (tansu's end_offsets can be short)."""
    consumer = KafkaConsumer(bootstrap_servers=cfg.kafka.bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=2000)
    consumer.assign([TopicPartition(cfg.kafka.samples_topic, p) for p in range(cfg.kafka.partitions)])
    ends = {p: 0 for p in range(cfg.kafka.partitions)}
    for record in consumer:
        ends[record.partition] = max(ends[record.partition], record.offset + 1)
    consumer.close()
    return ends


def _run_ranks(stack, cfg, out_dir) -> list[dict]:
    """Start both ranks, wait for them to exit 0 (idle), return what each saved."""
    out_dir.mkdir()
    port = free_port()
    env = {**config_env(cfg), "GLOO_SOCKET_IFNAME": "lo"}  # keep the collectives on loopback
    outs = [out_dir / f"rank{r}.pt" for r in range(2)]
    ranks = [start_process(f"learner-rank{r}", [sys.executable, "-c", RANK_MAIN, str(r), str(port), str(outs[r])],
                           stack.root / "logs", env=env) for r in range(2)]
    for proc in ranks:
        assert proc.popen.wait(timeout=200) == 0, proc.log_tail(40)
    return [torch.load(out, weights_only=False) for out in outs]


def test_ranks_share_partitions_round_robin():
    assert partitions_for(0, 2, [3, 0, 1, 2]) == [0, 2] and partitions_for(1, 2, [0, 1, 2, 3]) == [1, 3]
    assert partitions_for(2, 3, [0, 1]) == []  # more ranks than partitions: that rank only joins collectives
    shares = [partitions_for(r, 5, range(24)) for r in range(5)]
    assert sorted(p for share in shares for p in share) == list(range(24))


@pytest.mark.timeout(240)
def test_two_ranks_train_identical_replicas_on_disjoint_partitions_publish_and_resume(stack, tiny_log, tmp_path):
    cfg = apply_overrides(stack.cfg, {
        "learner.checkpoint_dir": str(stack.root / "ckpt-dp"),
        "learner.batch_size": 16,
        "learner.max_wait_ms": 300,
        "learner.checkpoint_every_steps": 4,
        "learner.publish_every_steps": 6,
        "learner.publish_every_s": 1e9,
        "learner.evict_after_ms": 0,
    })
    everything = samples_from_log(tiny_log, cfg)
    samples, later = everything[:400], everything[400:520]
    _produce_keyed(cfg, samples)
    ends = _end_offsets(cfg)
    assert sum(ends.values()) == len(samples) and all(ends.values())  # both partitions carry samples

    a, b = _run_ranks(stack, cfg, tmp_path / "first")

    # Identical replicas: every parameter and the vocabulary, bit for bit.
    assert a["steps"] == b["steps"] > 0
    assert a["model"].keys() == b["model"].keys()
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert a["vocab"] == b["vocab"]

    # Every sample trained exactly once, by the rank that owns its partition.
    sa, sb = a["status"], b["status"]
    assert sa.partitions == [0] and sb.partitions == [1]
    trained = sa.trained_ids + sb.trained_ids
    assert len(trained) == len(set(trained)) == len(samples)
    assert set(trained) == {s.sample_id for s in samples}
    assert sa.samples == sb.samples == len(samples)  # the group's count, the same on both ranks

    # Rank 0's checkpoint: the replicas' parameters and every partition's offset at its end.
    checkpoint = load_checkpoint(cfg.learner.checkpoint_dir, ARM)
    assert checkpoint["offsets"] == ends and checkpoint["world_size"] == 2
    assert checkpoint["trainer"]["steps"] == a["steps"]
    for key, value in a["model"].items():
        assert torch.equal(value, checkpoint["trainer"]["model"][key]), key

    # Rank 0 published versions like a single learner; the latest is searchable.
    assert sa.versions and not sb.versions
    info = read_latest(cfg.learner.model_store, ARM)
    assert info.version == sa.versions[-1] and 0 < info.trained_samples <= len(samples)
    tower = load_tower(cfg.learner.model_store, info.arm, info.version)
    z = user_vectors(tower, [rows_of(samples[0].windows)])
    client = vector_store.connect(cfg.milvus)
    hits = vector_store.search(client, info.collection, z, 10, 5.0)[0]
    client.close()
    known = set(a["vocab"]["keys"]["item"])
    assert len(hits) == 10 and all(item in known for item, _ in hits)

    # A restarted group resumes from rank 0's checkpoint and trains exactly the samples it does not cover;
    # it exchanges row-sparse table gradients (the first group's were dense: the checkpoint is the same).
    _produce_keyed(cfg, later)
    c, d = _run_ranks(stack, apply_overrides(cfg, {"learner.sparse_item_update": "on"}), tmp_path / "resumed")
    assert c["steps"] == d["steps"] > a["steps"]
    for key, value in c["model"].items():
        assert torch.equal(value, d["model"][key]), key
    again = c["status"].trained_ids + d["status"].trained_ids
    assert sorted(again) == sorted(s.sample_id for s in later)
    assert load_checkpoint(cfg.learner.checkpoint_dir, ARM)["offsets"] == _end_offsets(cfg)
