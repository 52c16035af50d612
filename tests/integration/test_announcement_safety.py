"""A Recall server fed forged version announcements: crafted pickles outside and inside the model store, a
record that is not an announcement, one that names another version's vectors and a forged LATEST.json run
nothing, go to the dead-letter topic with their reasons and a counter, and a later good version still serves."""

from __future__ import annotations

import dataclasses
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
import torch
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from conftest import samples_from_log, wait_for_quiet_topics
from infra.processes import free_port, wait_until
from learner.model_store import encode_announcement, latest_path, read_latest, tower_path, write_latest
from learner.online import OnlineLearner
from learner.publish import Publisher
from replay.producer import produce_log
from stream.topics import changelog_topic
from xdm.config import apply_overrides
from xdm.log_format import read_events
from xdm.v1 import events_pb2, recall_pb2, recall_pb2_grpc

ARM = "xdm"


class WritesMarker:
    """Unpickled by a full unpickler, this creates a file: any code could run in its place."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def _crafted_tower(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": 2, "header": WritesMarker(marker), "state_dict": {}}, path)


def _announce(cfg, payloads: list[bytes]) -> None:
    producer = KafkaProducer(bootstrap_servers=cfg.kafka.bootstrap, acks="all")
    for payload in payloads:
        producer.send(cfg.kafka.versions_topic, key=ARM.encode(), value=payload)
    producer.flush(timeout=10)
    producer.close(timeout=5)


def _dead_letters(cfg, count: int, timeout_s: float = 60) -> list[events_pb2.DeadLetter]:
    """The first `count` letters about versions (from the versions topic, or with no topic: LATEST.json) on the
    dead-letter topic, waiting for them."""
    consumer = KafkaConsumer(bootstrap_servers=cfg.kafka.bootstrap)
    try:
        consumer.assign([TopicPartition(cfg.kafka.dlq_topic, 0)])
        consumer.seek_to_beginning()
        letters: list[events_pb2.DeadLetter] = []
        deadline = time.monotonic() + timeout_s
        while len(letters) < count and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                letters.extend(letter for letter in map(events_pb2.DeadLetter.FromString, (r.value for r in records))
                               if letter.source_topic in (cfg.kafka.versions_topic, ""))
        assert len(letters) >= count, [letter.reason for letter in letters]
        return letters
    finally:
        consumer.close()


def _metrics(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {line.rpartition(" ")[0]: float(line.rpartition(" ")[2])
            for line in text.splitlines() if line and not line.startswith("#")}


def _served_version(stub, user: str) -> int:
    """The version of the model's (not the fallback's) answer for a user with clicks, 0 while none."""
    try:
        answer = stub.Recall(recall_pb2.RecallRequest(user_id=user, k=10, arm=ARM), timeout=5)
    except grpc.RpcError:
        return 0
    return 0 if answer.fallback else answer.model_version


@pytest.mark.timeout(240)
def test_forged_announcements_run_nothing_are_dead_lettered_and_a_later_version_serves(stack, small_log, tmp_path):
    # small_log: one user's windows are all the model's answer needs, and a worker reads it in seconds
    metrics_port = free_port()
    stack.cfg = cfg = apply_overrides(stack.cfg, {"serving.metrics_port": metrics_port})
    store = cfg.learner.model_store
    learner = OnlineLearner(cfg, ARM, ARM)
    samples = samples_from_log(small_log, cfg)
    learner.trainer.step(samples[:64])
    publisher = Publisher(cfg, ARM, ARM)
    try:
        good = publisher.publish(learner.trainer, 1)
        stack.start_worker()
        produce_log(cfg.kafka, small_log, progress=False)
        wait_for_quiet_topics(cfg, [changelog_topic(cfg), cfg.kafka.samples_topic])
        stack.start_server()
        user = next(e.user_id for e in read_events(small_log) if e.kind == "click")
        channel = grpc.insecure_channel(f"127.0.0.1:{cfg.serving.port}")
        stub = recall_pb2_grpc.RecallStub(channel)
        wait_until(lambda: _served_version(stub, user) == 1, 60, "version 1 served by the model")

        outside, inside, pointed = (tmp_path / name for name in ("ran-outside", "ran-inside", "ran-latest"))
        evil = tmp_path / "elsewhere" / "evil.pt"
        _crafted_tower(evil, outside)
        _crafted_tower(tower_path(store, ARM, 3), inside)

        def forged(version: int, **changes) -> bytes:
            fields = {"version": version, "collection": f"xdm_{ARM}_v{version}", **changes}
            return encode_announcement(dataclasses.replace(good, **fields))

        _announce(cfg, [
            forged(2, tower_uri=str(evil)),  # a pickle outside the store: never opened
            forged(3),  # a pickle at the path the store derives: refused by the weights-only unpickler
            b"\xff\xff not a record",
            forged(4, collection=f"xdm_{ARM}_v1"),  # version 1's item vectors under another version
        ])
        letters = _dead_letters(cfg, 4)
        assert all(letter.source_topic == cfg.kafka.versions_topic for letter in letters)
        reasons = [letter.reason for letter in letters]
        assert "version 2 of arm xdm could not be loaded" in reasons[0] and "No such file" in reasons[0]
        assert "version 3 of arm xdm could not be loaded" in reasons[1] and "not unpickled" in reasons[1]
        assert "not an xdm.v1.ModelVersion record" in reasons[2] and letters[2].payload == b"\xff\xff not a record"
        assert "is not 'xdm_xdm_v4'" in reasons[3]

        # A forged LATEST.json is read at the next store poll (the topic is quiet): refused the same way.
        _crafted_tower(tower_path(store, ARM, 5), pointed)
        write_latest(store, dataclasses.replace(good, version=5, collection=f"xdm_{ARM}_v5"))
        latest = _dead_letters(cfg, 5)[4]
        assert str(latest_path(store, ARM)) in latest.reason and "not unpickled" in latest.reason

        counts = _metrics(metrics_port)
        assert counts['xdm_recall_dead_letters_total{reason="load_failed"}'] == 3
        assert counts['xdm_recall_dead_letters_total{reason="undecodable"}'] == 1
        assert counts['xdm_recall_dead_letters_total{reason="wrong_collection"}'] == 1
        assert _served_version(stub, user) == 1

        learner.trainer.step(samples[64:128])
        publisher.publish(learner.trainer, 6)
        wait_until(lambda: _served_version(stub, user) == 6, 60, "the later good version served by the model")
        assert read_latest(store, ARM).version == 6
        assert not outside.exists() and not inside.exists() and not pointed.exists()
        assert stack.by_name("server").alive()
        channel.close()
    finally:
        publisher.close()
