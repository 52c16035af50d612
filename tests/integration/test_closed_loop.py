"""The first closed loop, exactly as `xdm up` runs it: simulated events -> broker -> Faust worker (RocksDB
windows) -> samples -> learner -> Milvus + model store -> gRPC Recall answers with real items."""

from __future__ import annotations

import math
from pathlib import Path

import grpc
import pytest

from learner.model_store import read_latest
from replay.bring_up import bring_up
from serving.client import recall
from xdm.config import apply_overrides
from xdm.log_format import read_items


@pytest.mark.timeout(300)
def test_recall_answers_with_catalogue_items_of_the_current_version(tmp_path: Path, test_config):
    # two simulated days instead of the profile's six: a version and the busiest user's windows are all the
    # answer needs, and the worker reads the log in a third of the time
    cfg = apply_overrides(test_config, {"sim.days": 2})
    result = bring_up(cfg, "test", tmp_path / "stack", progress=False, model_timeout_s=240)
    try:
        answer = result.answer
        catalogue = read_items(result.stack.root / "log")
        assert not answer.fallback, "the busiest user must be answered by the model, not the fallback"
        assert answer.arm == "xdm"
        assert len(answer.items) == 10
        assert all(item.item_id in catalogue for item in answer.items)
        assert all(math.isfinite(item.score) for item in answer.items)
        scores = [item.score for item in answer.items]
        assert scores == sorted(scores, reverse=True)
        latest = read_latest(result.stack.cfg.learner.model_store, "xdm")
        assert latest is not None and 1 <= answer.model_version <= latest.version

        address = f"127.0.0.1:{result.stack.cfg.serving.port}"
        again = recall(result.stack.cfg, address, result.user_id, k=5, request_id="req-42")
        assert again.request_id == "req-42" and len(again.items) == 5
        with pytest.raises(grpc.RpcError) as bad:
            recall(result.stack.cfg, address, "", k=5)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        result.stack.stop()
    for proc in result.stack.processes:
        assert not proc.alive()
