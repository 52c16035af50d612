"""learner.vector_store.connect: a connect that fails at once is retried within its timeout, visibly."""

from __future__ import annotations

import logging
import time

import pytest

from learner import vector_store
from xdm.config import MilvusConfig
from xdm.errors import ConfigError, ServiceError


class _FlakyClient:
    """Stands in for pymilvus.MilvusClient: the first `failures` constructions raise, as after a GOAWAY."""

    failures = 0
    made = 0

    def __init__(self, uri: str, timeout: float, **options) -> None:
        type(self).made += 1
        if type(self).made <= type(self).failures:
            raise ConnectionError("GOAWAY too_many_pings")
        self.uri = uri


@pytest.fixture
def flaky(monkeypatch):
    monkeypatch.setattr(vector_store, "MilvusClient", _FlakyClient)
    monkeypatch.setattr(vector_store, "CONNECT_RETRY_S", 0.05)
    _FlakyClient.made = 0
    return _FlakyClient


def test_a_connect_that_fails_once_is_retried_and_logged(flaky, caplog):
    flaky.failures = 1
    with caplog.at_level(logging.WARNING, logger="learner.vector_store"):
        client = vector_store.connect(MilvusConfig(), timeout_s=5)
    assert isinstance(client, _FlakyClient) and flaky.made == 2
    assert any("retrying" in r.getMessage() for r in caplog.records)


def test_a_server_that_stays_away_ends_in_service_error_within_the_timeout(flaky):
    flaky.failures = 10_000
    started = time.monotonic()
    with pytest.raises(ServiceError, match="cannot reach Milvus"):
        vector_store.connect(MilvusConfig(), timeout_s=0.5)
    assert time.monotonic() - started < 2 and flaky.made > 1


def test_without_retry_the_first_failure_is_final(flaky):
    flaky.failures = 1
    with pytest.raises(ServiceError):
        vector_store.connect(MilvusConfig(), timeout_s=5, retry=False)
    assert flaky.made == 1


def test_keepalive_setting_becomes_channel_options():
    assert vector_store.grpc_options(MilvusConfig()) == {"grpc.keepalive_time_ms": 10_000}  # pymilvus's
    off = vector_store.grpc_options(MilvusConfig(keepalive_s=0))
    assert off == {"grpc.keepalive_time_ms": 2**31 - 1, "grpc.keepalive_permit_without_calls": False}
    with pytest.raises(ConfigError, match="keepalive_s"):
        vector_store.grpc_options(MilvusConfig(keepalive_s=-1))


def test_every_client_is_made_with_the_keepalive_options(flaky, monkeypatch):
    made = []
    monkeypatch.setattr(vector_store, "MilvusClient", lambda uri, timeout, **kw: made.append(kw) or object())
    vector_store.connect(MilvusConfig(keepalive_s=0), timeout_s=1)
    assert made == [{"grpc_options": vector_store.grpc_options(MilvusConfig(keepalive_s=0))}]
