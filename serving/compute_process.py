"""The user tower and the in-memory search in a child process, so they do not share a GIL with gRPC.

Measured (bench/serving_latency.py, 100 k items, concurrency 8, 2 cores): with both on a thread of the
server, the server process sat at 0.96 of a core (event loop thread 0.34, compute thread 0.55) while the
other core was mostly idle: gRPC's Python and the tower's Python (collate, vocabulary lookups, the answer
lists) took turns on one interpreter lock. The child has its own; the server only sends a batch's windows
down a pipe and reads the answer when it comes.

The server's end of that pipe belongs to its event loop (an asyncio protocol on the socket), not to a
thread blocked on it: the thread cost a hand-over of the interpreter lock each way and a wake-up of the
loop per batch. The child's end is a plain multiprocessing Connection, so the framing is Connection's (a
4-byte length, then one pickle of the server's own strings and numbers): a batch goes down as its windows'
item keys (serving.user_vectors.WindowKeys), all the tower reads of them, and its top k come back packed
(serving.compute.PackedHits), not as a Python pair per hit.

The child builds each version itself (serving.compute.build_tower) and keeps the two latest of each arm,
so a request that took the previous version just before a swap still finds it. If the child dies, or
hangs (no answer to a batch within serving.compute_timeout_s, or to a load within
serving.compute_load_timeout_s: a stopped process, a deadlock, a load stuck on the vector store), it is
killed, the batch in flight fails with UNAVAILABLE, and a new child reloads the latest version of every
arm before the next batch is answered.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import os
import pickle
import socket
import struct
import threading
from dataclasses import asdict
from multiprocessing.connection import Connection
from typing import Any, Callable

from prometheus_client import Counter

from learner.model_store import Tower, VersionInfo
from serving.compute import Computed, build_tower, compute
from serving.search import SearchUnavailable
from serving.user_vectors import WindowKeys
from xdm.config import Config
from xdm.errors import ConfigError

log = logging.getLogger(__name__)
RESTARTS = Counter("xdm_recall_compute_restarts_total", "Compute processes started to replace one that died or hung",
                   ["cause"])
VERSIONS_KEPT = 2  # per arm: the current one and the one requests in flight may still hold


class ComputeProcess:
    """The server's handle on its compute child. `compute` is awaited on the server's event loop (one batch
    at a time); `load` is called by the registry, from another thread, while batches go on."""

    def __init__(self, cfg: Config) -> None:
        for name in ("compute_timeout_s", "compute_load_timeout_s"):
            if getattr(cfg.serving, name) <= 0:
                raise ConfigError(f"serving.{name} is {getattr(cfg.serving, name)}; it must be > 0 s")
        self.cfg = cfg
        self.on_lost: Callable[[VersionInfo], None] | None = None  # set by the registry
        self._context = multiprocessing.get_context("spawn")  # fork would copy gRPC's threads' state
        self._batch_lock: asyncio.Lock | None = None  # made on the event loop that awaits compute
        self._load_lock = threading.Lock()
        self._latest: dict[str, VersionInfo] = {}  # per arm: what a new child must load
        self._process: Any = None
        self._run: Connection | None = None  # the batch pipe until the event loop takes it over
        self._load: Connection | None = None
        self._pipe: _BatchPipe | None = None  # the batch pipe on the event loop (connected at the first batch)
        self._pipe_socket: socket.socket | None = None  # its socket, which the pipe's transport owns

    def start(self) -> None:
        run_parent, run_child = self._context.Pipe()
        load_parent, load_child = self._context.Pipe()
        self._process = self._context.Process(target=_child_main, args=(self.cfg, run_child, load_child),
                                              name="recall-compute", daemon=True)
        self._process.start()
        run_child.close()
        load_child.close()
        _bound_waits(load_parent, self.cfg.serving.compute_load_timeout_s)
        self._run, self._load = run_parent, load_parent
        log.info("compute process started", extra={"pid": self._process.pid})

    def close(self) -> None:
        self._drop_pipe()
        for conn in (self._run, self._load):
            if conn is not None:
                conn.close()
        if self._process is not None:
            self._process.join(timeout=5)
            if self._process.is_alive():
                self._process.kill()
                self._process.join(timeout=5)

    def load(self, info: VersionInfo) -> list[str]:
        """Build the version in the child (blocking); returns its popular items (cold-start fallback).
        A child that dies or misses serving.compute_load_timeout_s is killed; the next batch replaces it."""
        with self._load_lock:
            assert self._load is not None
            try:
                self._load.send(asdict(info))
                status, payload = self._load.recv()
            except (EOFError, OSError) as exc:
                self._kill()  # a late answer would be read as the next load's: this pipe is done
                raise SearchUnavailable(f"the compute process {_failure(exc)} while loading version {info.version}") from exc
        if status != "loaded":
            raise RuntimeError(f"the compute process could not load version {info.version} of {info.arm}: {payload}")
        if info.version >= getattr(self._latest.get(info.arm), "version", -1):
            self._latest[info.arm] = info
        return payload

    async def compute(self, info: VersionInfo, keys: WindowKeys, k: int) -> Computed:
        """One batch in the child. A child that dies or misses serving.compute_timeout_s fails this batch
        and is replaced before the next; one found dead before the batch is replaced first. Replacing
        blocks (a new child loads every served version), so it runs on a thread while batches wait."""
        if self._batch_lock is None:
            self._batch_lock = asyncio.Lock()
        async with self._batch_lock:
            if not self._process.is_alive():
                await asyncio.to_thread(self._replace, "died")
            message = pickle.dumps((info.arm, info.version, keys, k), protocol=pickle.HIGHEST_PROTOCOL)
            try:
                async with asyncio.timeout(self.cfg.serving.compute_timeout_s):
                    status, payload = pickle.loads(await (await self._batch_pipe()).exchange(message))
            except (TimeoutError, EOFError, OSError) as exc:
                await asyncio.to_thread(self._replace, "hung" if isinstance(exc, TimeoutError) else "died")
                raise SearchUnavailable(f"the compute process {_failure(exc)}; a new one was started") from exc
            except BaseException:  # cancelled mid-batch: its answer would be read as the next batch's
                self._drop_pipe()
                self._process.kill()  # the next batch finds it dead and replaces it
                raise
        if status == "unavailable":
            raise SearchUnavailable(payload)
        if status != "ok":
            raise RuntimeError(f"compute process: {payload}")
        return payload

    async def _batch_pipe(self) -> _BatchPipe:
        """The batch pipe as an asyncio protocol on the running loop; taken over from the Connection once
        per child (a replaced child brings a new pipe)."""
        if self._pipe is None:
            assert self._run is not None
            sock = socket.socket(fileno=os.dup(self._run.fileno()))  # a socketpair end (Linux Pipe)
            self._run.close()
            self._run = None
            _, self._pipe = await asyncio.get_running_loop().create_unix_connection(_BatchPipe, sock=sock)
            self._pipe_socket = sock
        return self._pipe

    def _drop_pipe(self) -> None:
        """Shut the batch pipe down from any thread: the child reads its end of file, and the transport,
        seeing its own, closes itself on the loop (a transport may only be closed there)."""
        sock, self._pipe, self._pipe_socket = self._pipe_socket, None, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by the transport

    def _kill(self) -> None:
        """SIGKILL: a hung child may never read the closed pipes, and a dead one takes no harm."""
        self._process.kill()
        self._process.join(timeout=5)

    def _replace(self, cause: str) -> None:
        """A new child with the latest version of every arm (the registry's towers name those versions).
        A version the new child cannot build is handed to `on_lost`: the registry forgets it (its users get
        the popular fallback, not errors) and loads it again from the store at its next poll."""
        log.error("compute process %s; starting a new one", cause, extra={"exitcode": self._process.exitcode})
        RESTARTS.labels(cause).inc()
        self._kill()
        self.close()
        with self._load_lock:
            self.start()
        for info in list(self._latest.values()):
            try:
                self.load(info)
            except Exception:
                log.exception("the new compute process could not load a served version",
                              extra={"arm": info.arm, "version": info.version})
                del self._latest[info.arm]
                if self.on_lost is not None:
                    self.on_lost(info)


def _bound_waits(conn: Connection, timeout_s: float) -> None:
    """Make every read and write on this end of a pipe fail with BlockingIOError after timeout_s without
    progress. Socket timeouts rather than Connection.poll: poll bounds only the wait for an answer's first
    byte, while a child stopped halfway through a large answer (or a send into a full pipe to a stopped
    child) would block for good. setsockopt, not settimeout: the pipe must stay in blocking mode."""
    with socket.socket(fileno=os.dup(conn.fileno())) as sock:  # the dup shares the socket, not its fd
        sock.setblocking(True)
        seconds = int(timeout_s)
        timeval = struct.pack("ll", seconds, int((timeout_s - seconds) * 1_000_000))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


class _BatchPipe(asyncio.Protocol):
    """The server's end of the batch pipe: one message out, one answer back, in Connection's framing."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._answer: asyncio.Future[bytes] | None = None
        self._lost: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def exchange(self, message: bytes) -> asyncio.Future[bytes]:
        """Send one message; the future gets the child's answer (bytes of one pickle), or EOFError."""
        if self._lost is not None:
            raise EOFError(f"the compute process closed its pipe ({self._lost!r})")
        assert self._transport is not None and self._answer is None
        self._answer = asyncio.get_running_loop().create_future()
        self._transport.write(struct.pack("!i", len(message)) + message)
        return self._answer

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) < 4:
            return
        size = struct.unpack_from("!i", self._buffer)[0]  # answers stay far below Connection's 2 GB framing
        if len(self._buffer) < 4 + size:
            return
        answer, self._buffer = bytes(self._buffer[4:4 + size]), self._buffer[4 + size:]
        if self._answer is not None and not self._answer.done():
            self._answer.set_result(answer)
        self._answer = None

    def connection_lost(self, exc: BaseException | None) -> None:
        self._lost = exc or EOFError("end of file")
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(EOFError(f"the compute process closed its pipe ({self._lost!r})"))
        self._answer = None


def _failure(exc: BaseException) -> str:
    if isinstance(exc, (BlockingIOError, TimeoutError)):
        return "did not answer in time and was killed"
    return f"died ({exc!r})"


def _child_main(cfg: Config, run_conn: Connection, load_conn: Connection) -> None:
    import faiss
    import torch

    # Out of the server's process group: a SIGTERM (or a terminal's Ctrl-C) sent to the group must reach
    # only the server, which drains its in-flight requests through this child and then closes the pipes.
    # The pipes tie the child's life to the server's: it ends when they close, however the server ended.
    os.setpgid(0, 0)
    torch.set_num_threads(1)  # the child answers one batch at a time; a second thread only contends
    # faiss (the IVF index) runs OpenMP teams of one thread per core by default: a batch of a few queries
    # gains nothing from a team, and a team (or a version's k-means build on the loader thread) would
    # take the core the server's event loop runs on.
    faiss.omp_set_num_threads(1)
    towers: dict[tuple[str, int], Tower] = {}
    threading.Thread(target=_load_loop, args=(cfg, load_conn, towers), name="loader", daemon=True).start()
    while True:
        try:
            arm, version, keys, k = run_conn.recv()
        except (EOFError, OSError):
            return  # the server closed the pipe or died: nothing left to answer
        tower = towers.get((arm, version))
        if tower is None:
            run_conn.send(("unavailable", f"version {version} of arm {arm} is not loaded in the compute process"))
            continue
        try:
            reply: tuple[str, Any] = ("ok", compute(tower, keys, k))
        except Exception as exc:  # a bad batch fails its requests, not the child
            log.exception("batch failed in the compute process")
            reply = ("error", repr(exc))
        try:
            run_conn.send(reply)
        except OSError:
            return  # the server is gone


def _load_loop(cfg: Config, load_conn: Connection, towers: dict[tuple[str, int], Tower]) -> None:
    while True:
        try:
            info = VersionInfo(**load_conn.recv())
        except (EOFError, OSError):
            return
        try:
            tower = build_tower(cfg, info)
        except Exception as exc:
            log.exception("could not build version", extra={"arm": info.arm, "version": info.version})
            _reply(load_conn, ("error", repr(exc)))
            continue
        towers[(info.arm, info.version)] = tower  # one assignment: the answering thread sees all of it or none
        for key in sorted(key for key in towers if key[0] == info.arm)[:-VERSIONS_KEPT]:
            del towers[key]
        if cfg.serving.gc_freeze and not gc.get_freeze_count():
            gc.collect()
            gc.freeze()  # the first versions out of later collections, as the server does with its start-up heap
        _reply(load_conn, ("loaded", list(tower.popular)))


def _reply(conn: Connection, message: tuple) -> None:
    try:
        conn.send(message)
    except OSError:
        pass  # the server is gone; the answering loop ends on its closed pipe
