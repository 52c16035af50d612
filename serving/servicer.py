"""The Recall servicer: one method per RPC; bad requests end with INVALID_ARGUMENT and a message."""

from __future__ import annotations

import asyncio
import logging

import grpc
from prometheus_client import Counter, Histogram

from serving.arms import Arms
from serving.registry import TowerRegistry
from serving.search import SearchUnavailable, VectorSearch
from serving.user_vectors import clicked_items, user_vectors
from stream.reader import WindowsReader
from xdm.v1 import recall_pb2, recall_pb2_grpc

log = logging.getLogger(__name__)
LATENCY = Histogram("xdm_recall_latency_seconds", "Recall latency", ["arm"],
                    buckets=(0.001, 0.002, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 1.0))
ANSWERS = Counter("xdm_recall_answers_total", "Recall answers", ["arm", "fallback"])
ERRORS = Counter("xdm_recall_errors_total", "Recall errors by status code", ["code"])
MAX_USER_ID = 256


class RecallServicer(recall_pb2_grpc.RecallServicer):
    def __init__(self, arms: Arms, registry: TowerRegistry, reader: WindowsReader, search: VectorSearch,
                 max_k: int) -> None:
        self.arms = arms
        self.registry = registry
        self.reader = reader
        self.search = search
        self.max_k = max_k

    async def Recall(self, request: recall_pb2.RecallRequest, context: grpc.aio.ServicerContext) -> recall_pb2.RecallResponse:
        problem = self._invalid(request)
        if problem:
            ERRORS.labels("INVALID_ARGUMENT").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        arm = request.arm or self.arms.assign(request.user_id)
        with LATENCY.labels(arm).time():
            response = await self._answer(request, arm, context)
        ANSWERS.labels(arm, str(response.fallback).lower()).inc()
        return response

    def _invalid(self, request: recall_pb2.RecallRequest) -> str:
        if not request.user_id:
            return "user_id is empty"
        if len(request.user_id) > MAX_USER_ID:
            return f"user_id is longer than {MAX_USER_ID} characters"
        if not 1 <= request.k <= self.max_k:
            return f"k must be between 1 and {self.max_k}, got {request.k}"
        if request.arm and request.arm not in self.arms.names:
            return f"unknown arm {request.arm!r}; serving {', '.join(self.arms.names)}"
        return ""

    async def _answer(self, request: recall_pb2.RecallRequest, arm: str, context) -> recall_pb2.RecallResponse:
        tower = self.registry.get(arm)  # taken once: this request stays on this version
        windows = self.reader.windows(request.user_id)
        if tower is None:
            return _response(request, arm, [], version=0, fallback=True)
        exclude = clicked_items(windows) if (windows and request.exclude_clicked) else set()
        if windows is None or not (windows.short or windows.long):
            popular = [(item, 0.0) for item in tower.popular if item not in exclude][: request.k]
            return _response(request, arm, popular, tower.info.version, fallback=True)
        z = await asyncio.to_thread(user_vectors, tower, [windows])
        try:
            hits = (await self.search.top_k(tower.info.collection, z, request.k + len(exclude)))[0]
        except SearchUnavailable as exc:
            ERRORS.labels("UNAVAILABLE").inc()
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        items = [(item, score) for item, score in hits if item not in exclude][: request.k]
        return _response(request, arm, items, tower.info.version, fallback=False)


def _response(request, arm: str, items: list[tuple[str, float]], version: int, fallback: bool) -> recall_pb2.RecallResponse:
    return recall_pb2.RecallResponse(
        items=[recall_pb2.ScoredItem(item_id=i, score=s) for i, s in items], model_version=version, arm=arm,
        fallback=fallback, request_id=request.request_id,
    )
