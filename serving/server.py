"""The grpc.aio Recall server: build it, add services, start, wait; stop gracefully on SIGTERM.

Besides Recall it serves the standard gRPC health service (NOT_SERVING while it drains, or while a
background task has been failing for serving.task_unhealthy_after_s: xdm/supervision.py), also alone on a
plaintext serving.health_port for probes that cannot speak TLS, and, when serving.reflection is on,
reflection, so grpcurl works without the .proto files. Access: TLS with serving.tls_cert / tls_key, a bearer
token with serving.auth_token_file (serving/auth.py), requests above serving.max_request_bytes refused.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import Histogram, start_http_server

from serving.arms import Arms
from serving.auth import BearerTokenInterceptor
from serving.batcher import MicroBatcher
from serving.compute_process import ComputeProcess
from serving.popular import PopularItems
from serving.registry import TowerRegistry
from serving.search import VectorSearch, check_local_index
from serving.servicer import RecallServicer
from stream.broker_loss import ReadPositions
from stream.reader import WindowsReader, served_layout
from xdm.client_security import read_secret
from xdm.config import Config, ServingConfig
from xdm.errors import ConfigError
from xdm.supervision import Supervisor
from xdm.v1 import recall_pb2, recall_pb2_grpc

log = logging.getLogger(__name__)
GC_PAUSE = Histogram("xdm_gc_pause_seconds", "Garbage-collection pauses of the server process", ["generation"],
                     buckets=(0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5))
_gc_started = [0.0]  # start of the collection in progress (collections never overlap: they hold the GIL)
COMPUTE_PLACES = ("process", "thread")
SERVICE_NAME = recall_pb2.DESCRIPTOR.services_by_name["Recall"].full_name
MIN_REQUEST_BYTES = 1024  # room for a Recall request at every field's cap (user id 256, request id 128)


@dataclass
class Deps:
    """What the servicer reads from, started; `start_deps` builds the real ones."""

    reader: WindowsReader
    registry: TowerRegistry
    search: VectorSearch
    popular: PopularItems
    batcher: MicroBatcher
    process: ComputeProcess | None = None
    supervisor: Supervisor = field(default_factory=Supervisor)  # runs the background tasks of the ones above

    async def stop(self) -> None:
        await self.batcher.stop()
        await self.popular.stop()
        await self.registry.stop()
        await self.reader.stop()
        self.search.close()
        if self.process is not None:
            await asyncio.to_thread(self.process.close)


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    deps: Deps
    health: health.HealthServicer
    health_server: grpc.aio.Server | None = None  # the plaintext health-only port, when serving.health_port is set

    async def stop(self, grace_s: float = 5.0) -> None:
        """Report NOT_SERVING, let in-flight requests finish within grace_s, then stop everything."""
        self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)
        if self.health_server is not None:
            await self.health_server.stop(0)
        await self.deps.stop()


async def start_deps(cfg: Config) -> Deps:
    torch.set_num_threads(1)  # one batch of user towers is small; more threads only contend with the event loop
    faiss.omp_set_num_threads(1)  # the IVF index's searches and builds, for the same reason (compute="thread")
    _set_switch_interval(cfg.serving.switch_interval_ms)
    if _time_gc not in gc.callbacks:
        gc.callbacks.append(_time_gc)
    check_local_index(cfg.serving)
    served_layout(cfg)  # a shard setting that cannot route fails here, before any child process starts
    process = _compute_process(cfg)
    arms = Arms.parse(cfg.serving.arms)
    supervisor = _supervisor(cfg)
    reader = WindowsReader(cfg, supervisor=supervisor)
    await reader.start()
    registry = TowerRegistry(cfg, arms.learners, process)
    await registry.start(supervisor)
    popular = PopularItems(cfg, supervisor)
    await popular.start()
    search = VectorSearch(cfg.milvus, cfg.serving.search_timeout_s)
    batcher = MicroBatcher(search, cfg.serving.batch_max, cfg.serving.batch_runners, process)
    batcher.start(supervisor)
    if cfg.serving.gc_freeze:
        _freeze_startup_heap()
    return Deps(reader=reader, registry=registry, search=search, popular=popular, batcher=batcher, process=process,
                supervisor=supervisor)


def _supervisor(cfg: Config) -> Supervisor:
    try:
        return Supervisor(cfg.serving.task_unhealthy_after_s)
    except ValueError as exc:
        raise ConfigError(f"serving.task_unhealthy_after_s: {exc}") from None


def _compute_process(cfg: Config) -> ComputeProcess | None:
    """The compute child serving.compute asks for, started (it imports torch while the server starts up),
    or None to compute on a thread of the server; what it will be asked to keep is checked first."""
    if cfg.serving.compute not in COMPUTE_PLACES:
        raise ConfigError(f"serving.compute is {cfg.serving.compute!r}; use one of {', '.join(COMPUTE_PLACES)}")
    if cfg.serving.item_encodings_max < 1:
        raise ConfigError(f"serving.item_encodings_max is {cfg.serving.item_encodings_max}; keep at least 1 item key")
    if cfg.serving.compute == "thread":
        return None
    process = ComputeProcess(cfg)
    process.start()
    return process


def _set_switch_interval(ms: float) -> None:
    """The compute thread needs the GIL back after each torch call while the event loop thread runs
    gRPC's Python; a busy thread hands it over only after the switch interval, so the interval caps
    that wait. Measured (bench/serving_latency.py, `switch1` row): 1 ms is no better than Python's 5 ms."""
    if not 0 < ms <= 100:
        raise ConfigError(f"serving.switch_interval_ms is {ms}; use a value in (0, 100] ms")
    sys.setswitchinterval(ms / 1000)


async def create_server(cfg: Config, deps: Deps) -> RunningServer:
    """Build and start the server on serving.host:port (port 0 picks a free one)."""
    sc = cfg.serving
    if sc.max_pending_calls < 1:
        raise ConfigError(f"serving.max_pending_calls is {sc.max_pending_calls}; it must be at least 1")
    # gRPC core keeps calls the server has not taken yet in a queue of 1,000 by default and answers the
    # overflow CANCELLED, which a caller cannot tell from its own cancellation: a burst of 3,000 calls lost
    # a quarter of them. Queued calls still end at their deadline (DEADLINE_EXCEEDED).
    server = grpc.aio.server(interceptors=_interceptors(sc),
                             options=[("grpc.server.max_pending_requests", sc.max_pending_calls),
                                      ("grpc.server.max_pending_requests_hard_limit", 2 * sc.max_pending_calls),
                                      *_request_limit(sc)])
    servicer = RecallServicer(Arms.parse(sc.arms), deps.registry, deps.reader, deps.batcher, deps.popular,
                              sc.max_k, sc.search_timeout_s)
    recall_pb2_grpc.add_RecallServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if sc.reflection:
        reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    address = f"{sc.host}:{sc.port}"
    port = server.add_secure_port(address, _tls(sc.tls_cert, sc.tls_key)) if sc.tls_cert else server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind {address}")
    await server.start()
    _follow_task_health(health_servicer, deps.supervisor, deps.reader.mirror.read_positions)
    health_server = await _start_health_port(sc, health_servicer)
    log.info("recall server listening", extra={"address": f"{sc.host}:{port}", "tls": bool(sc.tls_cert),
                                               "token": bool(sc.auth_token_file), "reflection": sc.reflection,
                                               "shard": f"{sc.shard} of {sc.shards}"})
    return RunningServer(server=server, port=port, deps=deps, health=health_servicer, health_server=health_server)


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
    log.info("shutting down", extra={"grace_s": cfg.serving.grace_s})
    await running.stop(cfg.serving.grace_s)


def _freeze_startup_heap() -> None:
    """Keep what start-up built (modules, torch, gRPC, the first towers and indexes) out of later collections.

    Seen in bench/serving_latency.py's server at 100 k items: full (generation-2) collections every ~3 s,
    each stopping the process for 120-230 ms to walk ~270 k objects, ~240 k of them built at start-up;
    every request in flight waited, which set p99 at concurrency 8 and 32. Frozen objects are still freed
    by reference counting; only a start-up object caught in a reference cycle would now never be freed.
    """
    gc.collect()
    gc.freeze()


def _time_gc(phase: str, info: dict) -> None:
    """gc.callbacks hook: each collection's pause into GC_PAUSE (the whole process waits for it)."""
    if phase == "start":
        _gc_started[0] = time.perf_counter()
    else:
        GC_PAUSE.labels(str(info["generation"])).observe(time.perf_counter() - _gc_started[0])


def _interceptors(sc: ServingConfig) -> list[grpc.aio.ServerInterceptor]:
    """The bearer-token check when serving.auth_token_file is set; only over TLS, where the token cannot be read."""
    if not sc.auth_token_file:
        return []
    if not sc.tls_cert:
        raise ConfigError("serving.auth_token_file is set but serving.tls_cert is not: a bearer token over plaintext "
                          "can be read on the way; set serving.tls_cert and serving.tls_key too")
    return [BearerTokenInterceptor(read_secret(sc.auth_token_file, "serving.auth_token_file"))]


def _request_limit(sc: ServingConfig) -> list[tuple[str, int]]:
    """gRPC's own receive limit (4 MB by default) as serving.max_request_bytes; gRPC answers a bigger
    message RESOURCE_EXHAUSTED before it is parsed, so a flood of large requests costs no decoding."""
    if sc.max_request_bytes < MIN_REQUEST_BYTES:
        raise ConfigError(f"serving.max_request_bytes is {sc.max_request_bytes}; keep at least {MIN_REQUEST_BYTES} "
                          "(a valid Recall request takes up to ~0.5 KB)")
    return [("grpc.max_receive_message_length", sc.max_request_bytes)]


async def _start_health_port(sc: ServingConfig, health_servicer: health.HealthServicer) -> grpc.aio.Server | None:
    """The same health statuses alone on plaintext serving.health_port: the kubelet's gRPC probes speak no TLS,
    and health is all this port answers (no Recall, no reflection), so nothing else goes unencrypted."""
    if not sc.health_port:
        return None
    server = grpc.aio.server(options=_request_limit(sc))
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    address = f"{sc.host}:{sc.health_port}"
    if server.add_insecure_port(address) == 0:
        raise OSError(f"cannot bind {address} (serving.health_port)")
    await server.start()
    return server


def _follow_task_health(health_servicer: health.HealthServicer, supervisor: Supervisor,
                        windows_source: ReadPositions) -> None:
    """SERVING while the background tasks are healthy, NOT_SERVING while one has been failing for longer than
    serving.task_unhealthy_after_s: a server whose windows or versions stopped moving should lose its traffic
    to replicas that are current, and get it back once it recovers. NOT_SERVING for good once the broker lost
    changelog records the windows replica had read (stream/broker_loss.py): those windows must be rebuilt by
    the workers, and this replica read again from the start, which is a restart."""
    def report(healthy: bool) -> None:
        healthy = healthy and not windows_source.lost
        status = health_pb2.HealthCheckResponse.SERVING if healthy else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in (SERVICE_NAME, ""):
            health_servicer.set(name, status)

    report(supervisor.healthy)
    supervisor.on_health_change(report)
    windows_source.on_loss(lambda _loss: report(supervisor.healthy))


def _tls(cert: str, key: str) -> grpc.ServerCredentials:
    if not key:
        raise ConfigError("serving.tls_cert is set but serving.tls_key is not; set both or neither")
    return grpc.ssl_server_credentials([(Path(key).read_bytes(), Path(cert).read_bytes())])
