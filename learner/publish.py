"""Publish version v of an arm: item vectors into the vector store, the user tower into the model store,
then (only then) the LATEST pointer, the alias and the announcement on the versions topic.

A version number is used once. Servers keep the tower they loaded for a version and ignore a second
announcement of it, so a collection or tower rewritten under a published number would pair one model's
user tower with another model's item vectors. The number of the next publish is therefore above every
number that left a trace anywhere (next_version), and the stores refuse to write a number twice.

What a version holds is copied on the training thread (take_snapshot), so it is one model even when it is
published on another thread while training goes on (learner/background_publish.py).
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from kafka import KafkaProducer

from learner import model_store, vector_store
from learner.model_store import AnnouncementRejected, VersionInfo
from learner.trainer import Trainer
from xdm.client_security import kafka_client_kwargs
from xdm.config import Config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Snapshot:
    """One version's content, copied between training steps."""

    item_ids: list[str]
    vectors: np.ndarray  # one row per item id
    model: Any  # a CPU copy of the trainer's model (learner.model.XDM), never trained further
    vocab: Any  # a copy of its vocabulary (learner.batch.Vocabulary)
    popular: list[str]
    trained_samples: int
    steps: int  # trainer steps this snapshot includes


def take_snapshot(trainer: Trainer) -> Snapshot:
    """Copy what a version publishes; training may go on the moment this returns."""
    ids, vectors = trainer.item_vectors()  # gathered rows: already a copy
    model = copy.deepcopy(trainer.model).cpu()  # on a GPU the copy briefly takes a second set of weights there
    model.zero_grad(set_to_none=True)
    return Snapshot(item_ids=ids, vectors=vectors.numpy(), model=model, vocab=copy.deepcopy(trainer.vocab),
                    popular=trainer.popular(), trained_samples=trainer.samples_seen, steps=trainer.steps)


def _go_ahead() -> None:
    """The default last check before a version becomes visible: nothing to call it off."""


class Publisher:
    def __init__(self, cfg: Config, arm: str, variant: str) -> None:
        self.cfg = cfg
        self.arm = arm
        self.variant = variant
        self._producer: KafkaProducer | None = None

    def publish(self, trainer: Trainer, version: int) -> VersionInfo:
        """Publish the trainer's model now as `version`, which must be unused (tests, benchmarks)."""
        return self.publish_snapshot(take_snapshot(trainer), version)

    def publish_snapshot(self, snap: Snapshot, version: int,
                         before_visible: Callable[[], None] = _go_ahead) -> VersionInfo:
        """Raises on any failure before the announcement: a partial version is never announced.

        `before_visible` runs once the collection and the tower are written, before LATEST, the alias or
        the announcement point at them: it may raise to call the publish off, leaving both unannounced
        (their number stays taken; drop_*_before removes them once they fall out of the kept versions).
        """
        started = time.monotonic()
        store = self.cfg.learner.model_store
        client = vector_store.connect(self.cfg.milvus)
        try:
            collection = vector_store.write_version(client, self.cfg.milvus, self.arm, version, snap.item_ids,
                                                    snap.vectors)
            info = VersionInfo(arm=self.arm, version=version, collection=collection,
                               tower_uri=str(model_store.tower_path(store, self.arm, version)),
                               published_ms=int(time.time() * 1000), trained_samples=snap.trained_samples,
                               items=len(snap.item_ids))
            payload = model_store.tower_payload(snap.model, snap.vocab, info, self.variant, snap.popular)
            model_store.save_tower(store, self.arm, version, payload)
            before_visible()
            model_store.write_latest(store, info)
            vector_store.point_alias(client, self.cfg.milvus, self.arm, collection)
            self._announce(info)
            keep_from = version - self.cfg.learner.keep_versions + 1
            vector_store.drop_versions_before(client, self.cfg.milvus, self.arm, keep_from)
            model_store.drop_towers_before(store, self.arm, keep_from)
        finally:
            client.close()
        log.info("published", extra={"arm": self.arm, "version": version, "items": len(snap.item_ids),
                                     "seconds": round(time.monotonic() - started, 3)})
        return info

    def next_version(self, floor: int) -> int:
        """The lowest number >= floor above every version of this arm that left a trace: LATEST, a tower
        file or a collection (announced or left by a publish that died halfway). `floor` carries what this
        process knows: its checkpoint's version + 1, and numbers its own attempts took."""
        store = self.cfg.learner.model_store
        taken = [floor - 1, *model_store.tower_versions(store, self.arm)]
        try:
            latest = model_store.read_latest(store, self.arm)
        except AnnouncementRejected as exc:  # the tower files and collections still bound the numbers
            log.warning("LATEST is unreadable; numbering versions from towers and collections",
                        extra={"arm": self.arm, "error": str(exc)})
            latest = None
        if latest is not None:
            taken.append(latest.version)
        client = vector_store.connect(self.cfg.milvus)
        try:
            taken.extend(vector_store.versions(client, self.cfg.milvus, self.arm))
        finally:
            client.close()
        return max(taken) + 1

    def _announce(self, info: VersionInfo) -> None:
        if self._producer is None:
            self._producer = KafkaProducer(**kafka_client_kwargs(self.cfg.kafka, "kafka-python"), acks="all")
        # Wait for the broker's ack: a lost announcement raises and is counted as a failed publish (servers
        # still find the version at their next store poll), where a flush alone would have hidden it.
        self._producer.send(self.cfg.kafka.versions_topic, key=info.arm.encode(),
                            value=model_store.encode_announcement(info)).get(timeout=10)

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=5)
