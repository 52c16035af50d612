"""The grpc.aio Recall server: build it, add services, start, wait; stop gracefully on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from serving.arms import Arms
from serving.registry import TowerRegistry
from serving.search import VectorSearch
from serving.servicer import RecallServicer
from stream.reader import WindowsReader
from xdm.config import Config
from xdm.v1 import recall_pb2, recall_pb2_grpc

log = logging.getLogger(__name__)
SERVICE_NAME = recall_pb2.DESCRIPTOR.services_by_name["Recall"].full_name


@dataclass
class Deps:
    """What the servicer reads from; tests may pass their own started instances."""

    reader: WindowsReader
    registry: TowerRegistry
    search: VectorSearch


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    deps: Deps
    health: health.HealthServicer

    async def stop(self, grace_s: float = 5.0) -> None:
        self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)
        await self.deps.registry.stop()
        await self.deps.reader.stop()
        self.deps.search.close()


async def start_deps(cfg: Config) -> Deps:
    torch.set_num_threads(1)  # one request's tower is tiny; more threads only contend with the event loop
    arms = Arms.parse(cfg.serving.arms)
    reader = WindowsReader(cfg)
    await reader.start()
    registry = TowerRegistry(cfg, arms.names)
    await registry.start()
    return Deps(reader=reader, registry=registry, search=VectorSearch(cfg.milvus, cfg.serving.search_timeout_s))


async def create_server(cfg: Config, deps: Deps) -> RunningServer:
    """Build and start the server on cfg.serving.host:port (port 0 picks a free one)."""
    server = grpc.aio.server()
    arms = Arms.parse(cfg.serving.arms)
    recall_pb2_grpc.add_RecallServicer_to_server(
        RecallServicer(arms, deps.registry, deps.reader, deps.search, cfg.serving.max_k), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    port = server.add_insecure_port(f"{cfg.serving.host}:{cfg.serving.port}")
    if port == 0:
        raise OSError(f"cannot bind {cfg.serving.host}:{cfg.serving.port}")
    await server.start()
    for name in (SERVICE_NAME, ""):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("recall server listening", extra={"address": f"{cfg.serving.host}:{port}"})
    return RunningServer(server=server, port=port, deps=deps, health=health_servicer)


async def serve(cfg: Config) -> None:
    """Run until SIGTERM or SIGINT, then finish in-flight requests and stop."""
    if cfg.serving.metrics_port:
        start_http_server(cfg.serving.metrics_port, addr=cfg.serving.host)
    deps = await start_deps(cfg)
    running = await create_server(cfg, deps)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await running.stop()
