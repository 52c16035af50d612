"""Micro-batching: concurrent Recall requests share one user-tower call and one vector search.

No request waits for a batch to fill: a runner takes whatever is queued when it becomes free, so at low
load a batch is one request and at high load the queue itself forms the batches. Requests are grouped by
the Tower they hold, so a batch never mixes versions.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from learner.model_store import Tower
from serving.search import VectorSearch
from serving.user_vectors import user_vectors
from stream.windows import Windows


@dataclass
class _Job:
    tower: Tower
    windows: Windows
    k: int
    future: asyncio.Future


class MicroBatcher:
    def __init__(self, search: VectorSearch, max_batch: int = 32, runners: int = 2) -> None:
        self.search = search
        self.max_batch = max_batch
        self.runners = runners
        self.batches = 0
        self.requests = 0
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(), name=f"recall-batcher-{i}") for i in range(self.runners)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def recall(self, tower: Tower, windows: Windows, k: int) -> list[tuple[str, float]]:
        """Top-k (item, score) for one user; raises SearchUnavailable when the vector store fails."""
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Job(tower, windows, k, future))
        return await future

    async def _run(self) -> None:
        while True:
            jobs = [await self._queue.get()]
            while len(jobs) < self.max_batch and not self._queue.empty():
                jobs.append(self._queue.get_nowait())
            jobs = [j for j in jobs if not j.future.done()]  # callers that gave up (deadline, cancel)
            groups: dict[int, list[_Job]] = {}
            for job in jobs:
                groups.setdefault(id(job.tower), []).append(job)
            for group in groups.values():
                await self._answer(group)

    async def _answer(self, jobs: list[_Job]) -> None:
        self.batches += 1
        self.requests += len(jobs)
        tower = jobs[0].tower
        try:
            z = await asyncio.to_thread(user_vectors, tower, [j.windows for j in jobs])
            k = max(j.k for j in jobs)
            if tower.index is not None:
                hits = await asyncio.to_thread(tower.index.top_k, z, k)
            else:
                hits = await self.search.top_k(tower.info.collection, z, k)
        except Exception as exc:  # every waiting request gets the failure, the runner goes on
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        for job, row in zip(jobs, hits):
            if not job.future.done():
                job.future.set_result(row[: job.k])
