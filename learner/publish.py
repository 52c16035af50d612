"""Publish version v of an arm: item vectors into the vector store, the user tower into the model store,
then (only then) the LATEST pointer, the alias and the announcement on the versions topic.

A version number is used once. Servers keep the tower they loaded for a version and ignore a second
announcement of it, so a collection or tower rewritten under a published number would pair one model's
user tower with another model's item vectors. The number of the next publish is therefore above every
number that left a trace anywhere (next_version), and the stores refuse to write a number twice.

What a version holds is copied on the training thread (take_snapshot), so it is one model even when it is
published on another thread while training goes on (learner/background_publish.py).

Item vectors go out in full or as a delta (learner/vector_delta.py): the Publisher keeps the vectors of the
last full version it announced (its base: one copy of the item table) and publishes only the rows that
differ from it, unless they exceed learner.publish_delta_max_share of the items or publish_full_every
deltas were taken on that base. A learner that starts (or restarts) has no base and publishes in full.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from kafka import KafkaProducer

from learner import model_store, vector_store
from learner.vector_delta import Base, Delta, diff
from learner.model_store import AnnouncementRejected, VersionInfo
from learner.trainer import Trainer
from xdm.client_security import kafka_client_kwargs
from xdm.config import Config

if TYPE_CHECKING:
    from pymilvus import MilvusClient

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


@dataclass
class PublishedBase(Base):
    """The last full version this Publisher announced: what its deltas are taken against."""

    version: int = 0
    collection: str = ""
    deltas: int = 0  # delta versions announced on it


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
        self._base: PublishedBase | None = None
        self._base_lock = threading.Lock()  # an attempt left to its thread may still announce beside a new one

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
            base, delta = self._delta(snap, client)
            if delta is None:
                collection = vector_store.write_version(client, self.cfg.milvus, self.arm, version, snap.item_ids,
                                                        snap.vectors)
            else:
                collection = vector_store.write_delta(client, self.cfg.milvus, self.arm, version, base.collection,
                                                      delta)
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
            self._published(snap, version, collection, base)
            keep_from = version - self.cfg.learner.keep_versions + 1
            vector_store.drop_versions_before(client, self.cfg.milvus, self.arm, keep_from)
            model_store.drop_towers_before(store, self.arm, keep_from)
        finally:
            client.close()
        log.info("published", extra={"arm": self.arm, "version": version, "items": len(snap.item_ids),
                                     "delta_rows": None if delta is None else delta.rows,
                                     "seconds": round(time.monotonic() - started, 3)})
        return info

    def _delta(self, snap: Snapshot, client: "MilvusClient") -> tuple[PublishedBase | None, Delta | None]:
        """The base and the delta to publish `snap` as, or (None, None) for a full version."""
        lc = self.cfg.learner
        base = self._base
        if base is None or lc.publish_delta_max_share <= 0:
            return None, None
        if lc.publish_full_every and base.deltas >= lc.publish_full_every:
            return None, None
        if base.vectors.shape[1:] != snap.vectors.shape[1:]:
            return None, None
        if not client.has_collection(base.collection, timeout=self.cfg.milvus.call_timeout_s):
            log.warning("the base of the next delta is gone; publishing in full",
                        extra={"arm": self.arm, "base": base.collection})
            return None, None
        delta = diff(base, snap.item_ids, snap.vectors)
        if delta.rows > lc.publish_delta_max_share * max(1, len(snap.item_ids)):
            return None, None
        return base, delta

    def _published(self, snap: Snapshot, version: int, collection: str, base: PublishedBase | None) -> None:
        """Count a delta on its base, or make an announced full version the base of the next deltas."""
        with self._base_lock:
            current = self._base
            if base is not None:
                if current is base:
                    base.deltas += 1
                return
            if current is None or current.version < version:
                self._base = PublishedBase(ids=snap.item_ids, vectors=snap.vectors, version=version,
                                           collection=collection)

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
