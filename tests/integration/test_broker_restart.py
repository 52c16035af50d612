"""A broker restart on memory storage (tansu) loses every topic: the system reports the loss loudly and no call
waits past its deadline. A stack of its own: the test destroys the broker's data."""

from __future__ import annotations

import time
import urllib.request
from collections import Counter

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from conftest import wait_for_quiet_topics
from serving_stack import clickers
from infra.processes import free_port, wait_until
from infra.stack import Stack, start_services
from infra.topics import ensure_topics
from replay.producer import produce_log
from stream.topics import changelog_topic
from xdm.config import load_config
from xdm.v1 import recall_pb2, recall_pb2_grpc

REPORT_WITHIN_S = 30  # end offsets are checked every second; a worker's recovery waits for a group join
CALL_DEADLINE_S = 2.0


def _loss_count(port: int, reader: str) -> float:
    """xdm_broker_data_loss_total of one reader on a Prometheus endpoint (0 when absent or unreachable)."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return 0.0
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == "xdm_broker_data_loss_total" and sample.labels.get("reader") == reader)


def _health(channel: grpc.Channel) -> int:
    request = health_pb2.HealthCheckRequest(service="xdm.v1.Recall")
    return health_pb2_grpc.HealthStub(channel).Check(request, timeout=CALL_DEADLINE_S).status


def _log(stack: Stack, name: str) -> str:
    return stack.by_name(name).log_path.read_text(errors="replace")


def _logged(stack: Stack, name: str, text: str) -> bool:
    return text in _log(stack, name)


@pytest.mark.timeout(300)
def test_a_broker_restart_is_reported_by_server_worker_and_learner_and_no_call_hangs(tmp_path, tiny_log):
    ports = {"server": free_port(), "learner-xdm": free_port()}
    cfg = load_config("test", env={}, overrides={"serving.metrics_port": ports["server"]})
    stack = start_services(tmp_path / "stack", cfg, "test")
    stack.metrics_ports = {"learner-xdm": ports["learner-xdm"]}
    changelog = changelog_topic(stack.cfg)
    try:
        stack.start_worker()
        stack.start_learner("xdm", "xdm")
        # a day and a half of the log: every topic the readers watch has data (samples included) to lose,
        # and the worker has read it in a fraction of the whole log's time
        produce_log(stack.cfg.kafka, tiny_log, progress=False, limit=15_000)
        wait_for_quiet_topics(stack.cfg, [changelog, stack.cfg.kafka.samples_topic])
        stack.start_server()
        channel = grpc.insecure_channel(f"127.0.0.1:{stack.cfg.serving.port}")
        stub = recall_pb2_grpc.RecallStub(channel)
        user = clickers(tiny_log)[0]
        wait_until(lambda: _health(channel) == health_pb2.HealthCheckResponse.SERVING, 30, "server SERVING")
        assert _loss_count(ports["server"], "windows") == 0  # no false alarm on a broker that lost nothing

        stack.restart("broker")
        codes: Counter = Counter()
        slowest = 0.0

        def reported() -> bool:
            nonlocal slowest
            started = time.monotonic()
            try:  # the windows replica is in memory: answering needs no broker
                stub.Recall(recall_pb2.RecallRequest(user_id=user, k=10), timeout=CALL_DEADLINE_S)
                codes["OK"] += 1
            except grpc.RpcError as err:
                codes[err.code().name] += 1
            slowest = max(slowest, time.monotonic() - started)
            return (_health(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
                    and _loss_count(ports["server"], "windows") >= 1
                    and _loss_count(ports["learner-xdm"], "learner-xdm") >= 1
                    and _logged(stack, "worker", f"broker lost data: topic {stack.cfg.kafka.items_topic}"))

        wait_until(reported, REPORT_WITHIN_S, "the broker's data loss reported by server, learner and worker",
                   interval_s=0.5)
        assert set(codes) == {"OK"} and slowest < CALL_DEADLINE_S, (codes, slowest)
        assert _logged(stack, "server", f"ERROR stream.broker_loss: broker lost data: topic {changelog}")
        assert _logged(stack, "server", "windows must be rebuilt")
        assert _logged(stack, "learner-xdm", f"ERROR stream.broker_loss: broker lost data: topic "
                                             f"{stack.cfg.kafka.samples_topic}")
        channel.close()
        server = stack.by_name("server")
        started = time.monotonic()
        server.stop()
        assert server.popen.returncode == 0 and time.monotonic() - started < 15, "the server hung on its way out"

        # The operator's next step without wiping the worker's state: topics created again, worker restarted
        # on its old RocksDB tables. Its changelog recovery finds stored offsets past the (empty) changelog.
        for name in ("learner-xdm", "worker"):
            stack.by_name(name).stop()
        stale = f"ERROR] broker lost data: topic {changelog} partition"
        reported_before = _log(stack, "worker").count(stale)  # the first worker's recovery may have said it too
        stack.restart("broker")  # empty again, and no client left to create topics with the broker's defaults
        ensure_topics(stack.cfg)
        stack.restart("worker")
        wait_until(lambda: _log(stack, "worker").count(stale) > reported_before, REPORT_WITHIN_S,
                   "the restarted worker reporting its stale windows")
    finally:
        stack.stop()
