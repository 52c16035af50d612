"""learner.vector_store.connect: a connect that fails at once is retried within its timeout, visibly.

Against a loopback port nobody listens on (pymilvus fails at once there); the retry that then succeeds
is tested against a real Milvus Lite server in tests/integration/test_milvus_connect.py.
"""

from __future__ import annotations

import logging
import time

import pytest

from infra.processes import free_port
from learner import vector_store
from xdm.config import MilvusConfig
from xdm.errors import ConfigError, ServiceError


@pytest.fixture
def nobody(monkeypatch) -> MilvusConfig:
    monkeypatch.setattr(vector_store, "CONNECT_RETRY_S", 0.05)
    return MilvusConfig(uri=f"http://127.0.0.1:{free_port()}", keepalive_s=0)


def test_a_server_that_stays_away_ends_in_service_error_within_the_timeout(nobody, caplog):
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="learner.vector_store"):
        with pytest.raises(ServiceError, match="cannot reach Milvus"):
            vector_store.connect(nobody, timeout_s=0.5)
    assert time.monotonic() - started < 5
    assert sum("retrying" in r.getMessage() for r in caplog.records) > 1  # each retry is logged


def test_without_retry_the_first_failure_is_final(nobody, caplog):
    with caplog.at_level(logging.WARNING, logger="learner.vector_store"):
        with pytest.raises(ServiceError):
            vector_store.connect(nobody, timeout_s=5, retry=False)
    assert not any("retrying" in r.getMessage() for r in caplog.records)


def test_keepalive_setting_becomes_channel_options():
    assert vector_store.grpc_options(MilvusConfig()) == {"grpc.keepalive_time_ms": 10_000}  # pymilvus's
    off = vector_store.grpc_options(MilvusConfig(keepalive_s=0))
    assert off == {"grpc.keepalive_time_ms": 2**31 - 1, "grpc.keepalive_permit_without_calls": False}
    with pytest.raises(ConfigError, match="keepalive_s"):
        vector_store.grpc_options(MilvusConfig(keepalive_s=-1))

