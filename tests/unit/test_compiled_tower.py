"""The traced serving tower answers exactly what the eager user tower answers, for every variant."""

from __future__ import annotations

import logging

import pytest
import torch

from learner.batch import ITEM_KINDS, profile_kind
from learner.model import XDM, config_for
from serving.compiled_tower import _inputs, _probe_batch, compile_tower

SIZES = {kind: 50 for kind in ITEM_KINDS}


def model_for(variant: str, **overrides) -> XDM:
    torch.manual_seed(3)
    sizes = dict(SIZES)
    cfg = config_for(variant, **overrides)
    sizes.update({profile_kind(f): 6 for f in cfg.profile_field_names})
    return XDM(cfg, sizes).eval()


@pytest.mark.parametrize("variant", ["sdm", "xdm", "xdm_wo_conf_metric"])
@pytest.mark.parametrize("shape", [(1, (1, 1, 1), (0, 0, 0)), (5, (3, 40, 100), (3, 0, 100)), (9, (20, 7, 2), (1, 7, 2))])
def test_traced_tower_equals_eager(variant: str, shape) -> None:
    model = model_for(variant)
    encode = compile_tower(model)
    assert encode != model.user_vector_from_q, "the tower should have been traced"
    batch = _probe_batch(model, *shape)
    with torch.inference_mode():
        assert torch.allclose(encode(*_inputs(model, batch)), model.user_vector(batch), atol=1e-5)


def test_profile_fields_are_traced_too() -> None:
    model = model_for("xdm", profile_fields="gender,age")
    batch = _probe_batch(model, 4, (6, 6, 6), (2, 3, 0))
    with torch.inference_mode():
        assert torch.allclose(compile_tower(model)(*_inputs(model, batch)), model.user_vector(batch), atol=1e-5)


def test_a_tower_the_tracer_cannot_follow_is_served_eagerly(monkeypatch, caplog) -> None:
    model = model_for("xdm")

    def broken_trace(*args, **kwargs):
        raise RuntimeError("not traceable")

    monkeypatch.setattr(torch.jit, "trace", broken_trace)
    with caplog.at_level(logging.WARNING):
        encode = compile_tower(model)
    assert encode == model.user_vector_from_q
    assert "tracing failed" in caplog.text


def test_a_trace_that_differs_is_not_served(monkeypatch, caplog) -> None:
    model = model_for("xdm")
    monkeypatch.setattr("serving.compiled_tower.TOLERANCE", -1.0)  # any error, even 0, counts as a mismatch
    with caplog.at_level(logging.WARNING):
        assert compile_tower(model) == model.user_vector_from_q
    assert "differs" in caplog.text
