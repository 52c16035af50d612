"""The project's one Recall client: each call goes to its user's shard, and fails over between that shard's replicas.

`xdm recall`, xdm up's answer, the replayer, the closed loop and the benches call Recall through it, so a
sharded deployment (serving.shards > 1) is reached by config alone:

- Route. The user's shard comes from the user id (xdm/shards.py: Kafka's murmur2 over kafka.partitions,
  then the shard layout), and the call goes to that shard's gRPC target from serving.shard_targets:
  `;`-separated targets, one a shard, or one target with `{shard}` in it. A target holds every replica
  of its shard: `ipv4:h1:50051,h2:50051`, or in Kubernetes the shard's headless Service
  `dns:///xdm-recall-0-headless.xdm.svc:50051`, whose DNS answer lists each ready pod. With one shard the
  target is the address a caller names, else serving.host:port.
- Spread and skip. A shard's channel uses gRPC's round_robin policy over its replicas, retries a call on
  UNAVAILABLE and CANCELLED (a broken connection, a server shutting down: Recall is a read, retrying it
  is safe) and reconnects within a second: calls spread over the replicas and skip one that is down.
- Fail over within the deadline. A replica that hangs (stopped, overloaded) answers nothing, and gRPC's
  retries cannot help: the call's deadline ends them all. So a try gets half of the time left, and a try
  that ends UNAVAILABLE or DEADLINE_EXCEEDED is made again (round robin: on the next replica) until the
  call's own deadline; the last try gets all that is left. Any other status (FAILED_PRECONDITION from a
  server of another shard, INVALID_ARGUMENT, UNAUTHENTICATED) is the caller's to see, at once.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

import grpc

from xdm.config import Config
from xdm.errors import ConfigError
from xdm.recall_channel import recall_aio_channel, recall_channel
from xdm.shards import ShardLayout, shard_layout
from xdm.v1 import recall_pb2, recall_pb2_grpc

# gRPC's own retries of a call on one shard's channel (gRFC A6): transparent to the caller, within its deadline
_RETRY_POLICY = {"methodConfig": [{
    "name": [{"service": "xdm.v1.Recall"}],
    "waitForReady": True,  # a call made while no replica is READY waits for one instead of failing fast
    "retryPolicy": {
        "maxAttempts": 5,
        "initialBackoff": "0.05s",
        "maxBackoff": "0.5s",
        "backoffMultiplier": 2,
        # CANCELLED too: a server shutting down (grpc.aio server.stop, any grace) kills the calls that reached
        # it but were not yet handed to the servicer, and the client sees CANCELLED (test_scale_servers: 4-5
        # per 6 restarts). A call the client cancels itself is never retried, so this retries only the server's.
        "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"],
    },
}]}
REPLICAS_OPTIONS = (
    ("grpc.lb_policy_name", "round_robin"),
    ("grpc.enable_retries", 1),
    ("grpc.service_config", json.dumps(_RETRY_POLICY)),
    # a restarted replica is back in rotation within about a second (gRPC's default backoff reaches 120 s)
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
)
FAILOVER_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED})
TRY_SHARE = 0.5  # of the time left, what one try may take before the call moves on to another replica
MIN_TRY_S = 0.05  # a try shorter than this could not be answered even by a healthy replica: take all that is left
FIRST_PAUSE_S, MAX_PAUSE_S = 0.02, 0.5  # between tries, doubling


def shard_targets(cfg: Config, address: str = "") -> list[str]:
    """Each shard's gRPC target, in shard order, from `address` (same syntax), serving.shard_targets or
    serving.host:port; checked against serving.shards."""
    sc = cfg.serving
    text = address or sc.shard_targets
    if not text:
        if sc.shards > 1:
            raise ConfigError(f"serving.shards is {sc.shards}: set serving.shard_targets to where clients find each "
                              "shard (\"ipv4:h1:50051,h2:50051;ipv4:h3:50051,h4:50051\" or one target with {shard})")
        return [f"{sc.host}:{sc.port}"]
    if "{shard}" in text:
        return [text.replace("{shard}", str(s)) for s in range(sc.shards)]
    targets = [t.strip() for t in text.split(";")]
    if len(targets) != sc.shards or not all(targets):
        raise ConfigError(f"{text!r} names {len(targets)} shard targets (';'-separated) but serving.shards is "
                          f"{sc.shards}: give one target per shard, or one with {{shard}} in it")
    return targets


@dataclass
class Failover:
    """The tries of one call: how long each may take, and whether and when to try again (module doc)."""

    deadline: float  # time.monotonic() by which the call must be answered
    pause_s: float = FIRST_PAUSE_S

    @classmethod
    def within(cls, timeout_s: float) -> Failover:
        return cls(time.monotonic() + timeout_s)

    def try_s(self) -> float:
        left = max(self.deadline - time.monotonic(), 0.0)
        share = left * TRY_SHARE
        return share if share >= MIN_TRY_S else left

    def pause_after(self, error: grpc.RpcError) -> float | None:
        """Seconds to wait before trying again, or None: the error is the caller's (not a replica's failure,
        or no time is left for another try)."""
        if error.code() not in FAILOVER_CODES:
            return None
        pause, self.pause_s = self.pause_s, min(self.pause_s * 2, MAX_PAUSE_S)
        left = self.deadline - time.monotonic()
        return pause if left - pause >= MIN_TRY_S else None


class _Routes:
    """The layout and the shards' targets that both clients route by."""

    def __init__(self, cfg: Config, address: str) -> None:
        self.layout: ShardLayout = shard_layout(cfg)
        self.targets = shard_targets(cfg, address)

    def shard_of(self, user_id: str) -> int:
        return 0 if len(self.targets) == 1 else self.layout.shard_of_user(user_id)


class RecallClient:
    """The asyncio client: `await client.recall(request, timeout_s)`; `await client.close()` when done."""

    def __init__(self, cfg: Config, address: str = "") -> None:
        self.routes = _Routes(cfg, address)
        self._channels = [recall_aio_channel(cfg.serving, t, REPLICAS_OPTIONS) for t in self.routes.targets]
        self._stubs = [recall_pb2_grpc.RecallStub(channel) for channel in self._channels]

    async def recall(self, request: recall_pb2.RecallRequest, timeout_s: float = 5.0) -> recall_pb2.RecallResponse:
        """The answer of the user's shard; raises grpc.aio.AioRpcError once failing over cannot help."""
        stub = self._stubs[self.routes.shard_of(request.user_id)]
        failover = Failover.within(timeout_s)
        while True:
            try:
                return await stub.Recall(request, timeout=failover.try_s(), wait_for_ready=True)
            except grpc.aio.AioRpcError as error:
                pause = failover.pause_after(error)
                if pause is None:
                    raise
            await asyncio.sleep(pause)

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()


class BlockingRecallClient:
    """The same for blocking callers (a CLI, threads); use it as a context manager."""

    def __init__(self, cfg: Config, address: str = "") -> None:
        self.routes = _Routes(cfg, address)
        self._channels = [recall_channel(cfg.serving, t, REPLICAS_OPTIONS) for t in self.routes.targets]
        self._stubs = [recall_pb2_grpc.RecallStub(channel) for channel in self._channels]

    def recall(self, request: recall_pb2.RecallRequest, timeout_s: float = 5.0) -> recall_pb2.RecallResponse:
        stub = self._stubs[self.routes.shard_of(request.user_id)]
        failover = Failover.within(timeout_s)
        while True:
            try:
                return stub.Recall(request, timeout=failover.try_s(), wait_for_ready=True)
            except grpc.RpcError as error:
                pause = failover.pause_after(error)
                if pause is None:
                    raise
            time.sleep(pause)

    def close(self) -> None:
        for channel in self._channels:
            channel.close()

    def __enter__(self) -> BlockingRecallClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def recall(cfg: Config, address: str, user_id: str, k: int = 10, arm: str = "", request_id: str = "",
           exclude_clicked: bool = False, timeout_s: float = 5.0) -> recall_pb2.RecallResponse:
    """One call (what `xdm recall USER` makes): address "" routes by serving.shard_targets / host:port."""
    with BlockingRecallClient(cfg, address) as client:
        return client.recall(recall_pb2.RecallRequest(user_id=user_id, k=k, arm=arm, request_id=request_id,
                                                      exclude_clicked=exclude_clicked), timeout_s)
