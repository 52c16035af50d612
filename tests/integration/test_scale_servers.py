"""Two `xdm serve` processes behind the project's client (serving/client.py) keep answering while each is restarted.

The client is the one every caller uses, configured as a production client of several replicas is (README,
"Scale-out"): target `ipv4:127.0.0.1:P1,127.0.0.1:P2` (in Kubernetes: `dns:///xdm-recall-headless...:50051`)
with gRPC's round_robin policy, retries on UNAVAILABLE and CANCELLED, wait_for_ready and quick reconnects,
and failover between the replicas within each call's deadline.
"""

from __future__ import annotations

import time

import pytest

from conftest import samples_from_log
from infra.processes import wait_until
from learner.online import OnlineLearner
from learner.publish import Publisher
from serving.client import BlockingRecallClient
from serving_stack import RequestStream, Servers


@pytest.mark.timeout(300)
def test_two_round_robin_servers_fail_no_request_while_each_is_restarted(stack, tiny_log):
    samples = samples_from_log(tiny_log, stack.cfg)
    learner = OnlineLearner(stack.cfg, "xdm", "xdm")
    learner.trainer.step(samples[:32])
    publisher = Publisher(stack.cfg, "xdm", "xdm")
    publisher.publish(learner.trainer, 1)  # a tiny model: both servers load version 1 from the store
    publisher.close()
    users = sorted({s.user_id for s in samples})

    servers = Servers(stack, 2)
    for i in range(2):  # launched together, they load together; each restart below stays one at a time
        servers.launch(i)
    for i in range(2):
        servers.wait_serving(i)
    client = BlockingRecallClient(stack.cfg, servers.target())
    with RequestStream(client, users) as stream:
        wait_until(lambda: servers.answers(0) > 0 and servers.answers(1) > 0, 30, "both servers answering")
        for i in range(2):
            down_at = time.monotonic()
            servers.stop(i)
            servers.start(i)
            up_at = time.monotonic()
            assert stream.successes_between(down_at, up_at) > 0, "nobody answered while a server was down"
            wait_until(lambda i=i: servers.answers(i) > 0, 30, f"restarted server {i} back in rotation")
        answered = len(stream.ok_at)
        wait_until(lambda: len(stream.ok_at) > answered + 50, 30, "answers after both restarts")
    client.close()

    assert stream.failures == [], stream.failures[:5]
    assert len(stream.ok_at) > 200
    assert stream.versions == {1}  # every answer came from a server that had loaded the published version
