"""Fixtures that start real services (tansu broker, Milvus Lite) on free loopback ports and always stop them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from infra.stack import Stack, start_services
from xdm.config import load_config

torch.set_num_threads(1)  # small test models: extra threads only contend for the 2 cores


@pytest.fixture
def test_config():
    """The `test` profile without the caller's XDM_* environment leaking in."""
    return load_config("test", env={})


@pytest.fixture
def stack(tmp_path: Path, test_config):
    """Broker + Milvus Lite + topics, fresh for one test; every process is stopped afterwards."""
    started = start_services(tmp_path / "stack", test_config, "test")
    try:
        yield started
    finally:
        started.stop()


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/integration" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.integration)
