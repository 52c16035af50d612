"""Which user tower serves each arm, with hot reload when a learner announces a new version.

A request takes the arm's current Tower once and uses it to the end, so a swap mid-request cannot pair a
user tower with another version's item vectors: the Tower names its own collection.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer

from learner.model_store import Tower, VersionInfo, decode_announcement, read_latest
from serving.compute import build_tower
from serving.compute_process import ComputeProcess
from stream.mirror import stop_background
from xdm.config import Config

log = logging.getLogger(__name__)
STORE_POLL_MS = 5000  # with no announcement for this long, re-read the store


class TowerRegistry:
    def __init__(self, cfg: Config, arms: tuple[str, ...], process: ComputeProcess | None = None) -> None:
        self.cfg = cfg
        self.arms = arms
        self.process = process
        if process is not None:
            process.on_lost = self.forget
        self.current: dict[str, Tower] = {}
        self.swaps = 0
        self._task: asyncio.Task | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def get(self, arm: str) -> Tower | None:
        return self.current.get(arm)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        # Listen first, then read the store: a version announced in between is then seen either way.
        self._consumer = AIOKafkaConsumer(self.cfg.kafka.versions_topic, bootstrap_servers=self.cfg.kafka.bootstrap,
                                          auto_offset_reset="latest", enable_auto_commit=False)
        await self._consumer.start()
        await self.poll_store()
        self._task = asyncio.create_task(self._watch(), name="tower-watch")

    async def poll_store(self) -> None:
        """Load each arm's LATEST version from the model store (start-up, and a safety net)."""
        for arm in self.arms:
            info = read_latest(self.cfg.learner.model_store, arm)
            if info is not None:
                await self.load(info)

    async def stop(self) -> None:
        await stop_background(self._task, self._consumer)

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
        assert self._consumer is not None
        while True:
            batches = await self._consumer.getmany(timeout_ms=STORE_POLL_MS)
            if not batches:
                await self.poll_store()
            for records in batches.values():
                for record in records:
                    await self._on_announcement(record.value)

    async def _on_announcement(self, payload: bytes) -> None:
        try:
            await self.load(decode_announcement(payload))
        except Exception:  # a bad announcement must not stop hot reload of later ones
            log.exception("could not load announced version")
