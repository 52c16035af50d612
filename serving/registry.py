"""Which user tower serves each arm, with hot reload when a learner announces a new version.

A request takes the arm's current Tower once and uses it to the end, so a swap mid-request cannot pair a
user tower with another version's item vectors: the Tower names its own collection.

Announcements and LATEST.json are inputs anyone with write access to the topic or the store controls: each
is validated (learner.model_store.validate_announcement) and its tower found by (arm, version) in this
server's own store; one that is refused or cannot be loaded goes to the dead-letter topic with its reason
and counts in xdm_recall_dead_letters_total{reason}, and the server goes on with the version it has.
"""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial
from typing import Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import ConsumerRecord
from google.protobuf.message import DecodeError
from prometheus_client import Counter

from learner.model_store import (AnnouncementRejected, Tower, VersionInfo, decode_announcement, latest_path,
                                 read_latest, validate_announcement)
from serving.compute import build_tower
from serving.compute_process import ComputeProcess
from stream.mirror import stop_background
from xdm.client_security import kafka_client_kwargs
from xdm.config import Config
from xdm.supervision import SupervisedTask, Supervisor
from xdm.v1 import events_pb2

log = logging.getLogger(__name__)
STORE_POLL_MS = 5000  # with no announcement for this long, re-read the store
LETTER_TIMEOUT_S = 10.0  # connecting, then sending, a dead letter: worth a short wait, never a stalled reload loop
DEAD_LETTERS = Counter("xdm_recall_dead_letters_total",
                       "Version announcements (versions-topic records, LATEST.json) refused or not loadable, by reason",
                       ["reason"])
Refusal = tuple[str, str]  # (reason code: a metric label from a fixed set, reason: the full text)


class TowerRegistry:
    def __init__(self, cfg: Config, arms: tuple[str, ...], process: ComputeProcess | None = None) -> None:
        self.cfg = cfg
        self.arms = arms
        self.process = process
        if process is not None:
            process.on_lost = self.forget
        self.current: dict[str, Tower] = {}
        self.swaps = 0
        self._task: SupervisedTask | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._letters: AIOKafkaProducer | None = None  # started at the first dead letter
        self._refused_latest: dict[str, Refusal] = {}  # per arm: why its LATEST.json was last dead-lettered

    def get(self, arm: str) -> Tower | None:
        return self.current.get(arm)

    async def start(self, supervisor: Supervisor | None = None) -> None:
        """Read the store, then watch for announcements in a task under `supervisor` (one of its own if None)."""
        self._loop = asyncio.get_running_loop()
        # Listen first, then read the store: a version announced in between is then seen either way.
        self._consumer = AIOKafkaConsumer(self.cfg.kafka.versions_topic, **kafka_client_kwargs(self.cfg.kafka, "aiokafka"),
                                          auto_offset_reset="latest", enable_auto_commit=False)
        await self._consumer.start()
        await self.poll_store()
        self._task = (supervisor or Supervisor()).start("tower-watch", self._watch)

    async def poll_store(self) -> None:
        """Load each arm's LATEST version from the model store (start-up, and a safety net). A LATEST.json that
        is refused is dead-lettered once, not at every poll, until it changes or loads."""
        store = self.cfg.learner.model_store
        for arm in self.arms:
            refusal = await self._take(partial(read_latest, store, arm))
            if refusal is None:
                self._refused_latest.pop(arm, None)
            elif refusal != self._refused_latest.get(arm):
                self._refused_latest[arm] = refusal
                code, reason = refusal
                await self._dead_letter(code, f"{latest_path(store, arm)}: {reason}", None)

    async def stop(self) -> None:
        await stop_background(self._task, self._consumer)
        if self._letters is not None:
            await self._letters.stop()

    async def load(self, info: VersionInfo) -> bool:
        """Load a version's tower off the event loop (or in the compute process) and swap it in if it is
        newer; True if swapped."""
        if info.arm not in self.arms:
            return False
        current = self.current.get(info.arm)
        if current is not None and current.info.version >= info.version:
            return False
        if self.process is not None:  # the child builds the tower; this process keeps what requests need
            popular = await asyncio.to_thread(self.process.load, info)
            tower = Tower(model=None, vocab=None, info=info, popular=popular)
        else:
            tower = await asyncio.to_thread(build_tower, self.cfg, info)
        self.current[info.arm] = tower  # one reference assignment: the swap is atomic for readers
        self.swaps += 1
        log.info("serving new version", extra={"arm": info.arm, "version": info.version,
                                                "collection": info.collection})
        return True

    def forget(self, info: VersionInfo) -> None:
        """Stop serving a version the compute process lost (its users get the popular fallback); the next
        store poll loads it again. Called from the batcher's compute thread, carried out on the event loop
        (where versions are swapped in), so it cannot drop a newer version swapped in meanwhile."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._forget, info)

    def _forget(self, info: VersionInfo) -> None:
        current = self.current.get(info.arm)
        if current is not None and current.info.version == info.version:
            self.current.pop(info.arm, None)
            log.warning("version dropped until the store is read again", extra={"arm": info.arm, "version": info.version})

    async def _watch(self) -> None:
        # A failure here (a store poll that raises, a consumer error) restarts this loop under its supervisor
        # with backoff, counted in xdm_background_task_failures_total{task="tower-watch"}; failing on for
        # serving.task_unhealthy_after_s turns the server's health NOT_SERVING.
        assert self._consumer is not None and self._task is not None
        while True:
            batches = await self._consumer.getmany(timeout_ms=STORE_POLL_MS)
            if not batches:
                await self.poll_store()
            for records in batches.values():
                for record in records:
                    await self._on_announcement(record)
            self._task.progressed()

    async def _on_announcement(self, record: ConsumerRecord) -> None:
        refusal = await self._take(partial(decode_announcement, record.value or b""))
        if refusal is not None:
            await self._dead_letter(*refusal, record)

    async def _take(self, read: Callable[[], VersionInfo | None]) -> Refusal | None:
        """Read one announcement, validate it and load its version if newer; why not, when it is refused or
        cannot be loaded. Never raises: a bad announcement must not stop hot reload of later ones."""
        try:
            info = read()
            if info is None:
                return None
            validate_announcement(info, self.arms, self.cfg.milvus)
        except DecodeError as exc:
            return "undecodable", f"not an xdm.v1.ModelVersion record: {exc}"
        except AnnouncementRejected as exc:
            return exc.code, str(exc)
        except OSError as exc:  # LATEST.json unreadable
            return "load_failed", f"could not read the announcement: {exc}"
        try:
            await self.load(info)
        except Exception as exc:
            log.exception("could not load announced version", extra={"arm": info.arm, "version": info.version})
            return "load_failed", f"version {info.version} of arm {info.arm} could not be loaded: {exc}"
        return None

    async def _dead_letter(self, code: str, reason: str, record: ConsumerRecord | None) -> None:
        """Set a refused announcement aside with its reason (a record's own bytes and place, or a LATEST.json's
        path in the reason). A letter that cannot be sent is logged, never raised: the registry goes on."""
        DEAD_LETTERS.labels(code).inc()
        log.warning("version announcement dead-lettered", extra={"code": code, "reason": reason})
        letter = events_pb2.DeadLetter(reason=reason, at_ms=int(time.time() * 1000), partition=-1, offset=-1)
        if record is not None:
            letter.source_topic, letter.partition, letter.offset = record.topic, record.partition, record.offset
            letter.payload = (record.value or b"")[:self.cfg.stream.max_event_bytes]
        try:
            producer = await self._letter_producer()
            await asyncio.wait_for(producer.send_and_wait(self.cfg.kafka.dlq_topic, letter.SerializeToString(),
                                                          key=record.key if record else None), LETTER_TIMEOUT_S)
        except Exception:
            log.exception("could not send a dead letter; it is only logged", extra={"code": code})

    async def _letter_producer(self) -> AIOKafkaProducer:
        if self._letters is None:
            producer = AIOKafkaProducer(**kafka_client_kwargs(self.cfg.kafka, "aiokafka"), acks="all")
            try:
                await asyncio.wait_for(producer.start(), LETTER_TIMEOUT_S)
            except BaseException:
                await producer.stop()
                raise
            self._letters = producer
        return self._letters
