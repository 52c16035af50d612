"""Publish version v of an arm: item vectors into the vector store, the user tower into the model store,
then (only then) the LATEST pointer, the alias and the announcement on the versions topic.
"""

from __future__ import annotations

import logging
import time

from kafka import KafkaProducer

from learner import model_store, vector_store
from learner.model_store import VersionInfo
from learner.trainer import Trainer
from xdm.client_security import kafka_client_kwargs
from xdm.config import Config

log = logging.getLogger(__name__)


class Publisher:
    def __init__(self, cfg: Config, arm: str, variant: str) -> None:
        self.cfg = cfg
        self.arm = arm
        self.variant = variant
        self._producer: KafkaProducer | None = None

    def publish(self, trainer: Trainer, version: int) -> VersionInfo:
        """Raises on any failure before the announcement: a partial version is never announced."""
        started = time.monotonic()
        ids, vectors = trainer.item_vectors()
        client = vector_store.connect(self.cfg.milvus)
        try:
            collection = vector_store.write_version(client, self.cfg.milvus, self.arm, version, ids, vectors.numpy())
            store = self.cfg.learner.model_store
            info = VersionInfo(arm=self.arm, version=version, collection=collection,
                               tower_uri=str(model_store.tower_path(store, self.arm, version)),
                               published_ms=int(time.time() * 1000), trained_samples=trainer.samples_seen,
                               items=len(ids))
            payload = model_store.tower_payload(trainer.model, trainer.vocab, info, self.variant, trainer.popular())
            model_store.save_tower(store, self.arm, version, payload)
            model_store.write_latest(store, info)
            vector_store.point_alias(client, self.cfg.milvus, self.arm, collection)
            self._announce(info)
            keep_from = version - self.cfg.learner.keep_versions + 1
            vector_store.drop_versions_before(client, self.cfg.milvus, self.arm, keep_from)
            model_store.drop_towers_before(store, self.arm, keep_from)
        finally:
            client.close()
        log.info("published", extra={"arm": self.arm, "version": version, "items": len(ids),
                                     "seconds": round(time.monotonic() - started, 3)})
        return info

    def _announce(self, info: VersionInfo) -> None:
        if self._producer is None:
            self._producer = KafkaProducer(**kafka_client_kwargs(self.cfg.kafka, "kafka-python"), acks="all")
        self._producer.send(self.cfg.kafka.versions_topic, key=info.arm.encode(),
                            value=model_store.encode_announcement(info))
        self._producer.flush(timeout=10)

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=5)
