"""Micro-batching: concurrent Recall requests share one user-tower call and one vector search.

No request waits for a batch to fill: a runner takes whatever is queued when it becomes free, so at low
load a batch is one request and at high load the queue itself forms the batches. Requests are grouped by
the Tower they hold, so a batch never mixes versions.

A runner hands the whole batch (tower, then the in-memory search) over in one hop: the event loop keeps
receiving and queueing meanwhile, and the next batch is formed only when the batch in flight is done, so
it holds everything that arrived during the previous one. With a compute process (serving.compute =
"process", serving/compute_process.py) the runner sends the batch to the child from the event loop and
awaits the answer; otherwise each runner owns a compute thread that computes the batch itself, sharing
the GIL with the event loop.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

from prometheus_client import Histogram

from learner.model_store import Tower
from serving.compute import Computed, compute
from serving.compute_process import ComputeProcess
from serving.search import VectorSearch
from serving.user_vectors import window_keys
from stream.windows import WindowRows
from xdm.supervision import SupervisedTask, Supervisor

BATCH_SIZE = Histogram("xdm_recall_batch_size", "Requests answered by one tower call and one search",
                       buckets=(1, 2, 4, 8, 16, 32, 64))
STAGE = Histogram("xdm_recall_stage_seconds", "Time per batch in each stage of a Recall", ["stage"],
                  buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25))
QUEUED, TOWER, SEARCH = (STAGE.labels(stage) for stage in ("queue", "tower", "search"))  # labelled once, not per batch


@dataclass
class _Job:
    tower: Tower
    windows: WindowRows
    k: int
    future: asyncio.Future
    queued: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    def __init__(self, search: VectorSearch, max_batch: int = 32, runners: int = 1,
                 process: ComputeProcess | None = None) -> None:
        self.search = search
        self.process = process
        self.max_batch = max_batch
        self.runners = runners
        self.batches = 0
        self.requests = 0
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._tasks: list[SupervisedTask] = []
        self._pool = ThreadPoolExecutor(max_workers=runners, thread_name_prefix="recall-compute")

    def start(self, supervisor: Supervisor | None = None) -> None:
        """Start the runners, each a task under `supervisor` (one of its own if None): a runner that fails is
        restarted, or every later request would wait on a queue nobody reads."""
        supervisor = supervisor or Supervisor()
        self._tasks = [supervisor.start(f"recall-batcher-{i}", partial(self._run, i)) for i in range(self.runners)]

    async def stop(self) -> None:
        await asyncio.gather(*(task.stop() for task in self._tasks))
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def recall(self, tower: Tower, windows: WindowRows, k: int) -> list[tuple[str, float]]:
        """Top-k (item, score) for one user; raises SearchUnavailable when the vector store fails."""
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Job(tower, windows, k, future))
        return await future

    async def _run(self, runner: int) -> None:
        task = self._tasks[runner]
        while True:
            jobs = [await self._queue.get()]
            while len(jobs) < self.max_batch and not self._queue.empty():
                jobs.append(self._queue.get_nowait())
            jobs = [j for j in jobs if not j.future.done()]  # callers that gave up (deadline, cancel)
            groups: dict[int, list[_Job]] = {}
            for job in jobs:
                groups.setdefault(id(job.tower), []).append(job)
            try:
                for group in groups.values():
                    await self._answer(group)
            except Exception as exc:  # its callers hear of it now, not at their deadline; the runner is restarted
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                raise
            task.progressed()

    async def _answer(self, jobs: list[_Job]) -> None:
        self.batches += 1
        self.requests += len(jobs)
        BATCH_SIZE.observe(len(jobs))
        QUEUED.observe(time.perf_counter() - min(j.queued for j in jobs))
        tower = jobs[0].tower
        k = max(j.k for j in jobs)
        loop = asyncio.get_running_loop()
        keys = window_keys([j.windows for j in jobs])
        try:
            if self.process is not None:
                done: Computed = await self.process.compute(tower.info, keys, k)
            else:
                done = await loop.run_in_executor(self._pool, compute, tower, keys, k)
            TOWER.observe(done.tower_s)
            if done.hits is None:  # the version's vectors are not in memory: search the vector store
                started = time.perf_counter()
                hits = await self.search.top_k(tower.info.collection, done.z, k)
                SEARCH.observe(time.perf_counter() - started)
            else:
                hits = done.hits.unpack()
                SEARCH.observe(done.search_s)
        except Exception as exc:  # every waiting request gets the failure, the runner goes on
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        for job, row in zip(jobs, hits):
            if not job.future.done():
                job.future.set_result(row[: job.k])

