"""The user tower traced and frozen for serving: the same z as the eager model, with less Python per call.

At concurrency 8 the eager tower was the largest stage of a Recall (4.0 ms a batch of ~4, most of it
Python dispatch between ~100 small ops: measured 2.5 vs 1.5 ms a batch of 4 traced, one core). Tracing
records that sequence once per version; `torch.jit.freeze` folds the weights in as constants.

A trace records one path through the code, so it is only trusted after it reproduced the eager tower
on probe batches of other sizes than the one it was traced with (other batch size, every window width,
empty windows included): shapes must stay dynamic, not be baked in. A tower that fails to trace or to
reproduce is served eagerly, with a warning: slower, never different.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from learner.batch import ITEM_KINDS, Batch, profile_kind

log = logging.getLogger(__name__)

Encode = Callable[..., Tensor]  # model.user_vector_from_q's arguments -> z
TOLERANCE = 1e-4  # max |z_traced - z_eager|; float32 reordering stays ~1e-7 here
_PROBES = ((3, (5, 9, 17), (2, 9, 0)), (1, (1, 1, 1), (0, 0, 0)), (6, (13, 18, 77), (13, 1, 77)))


class _UserVector(torch.nn.Module):
    """user_vector_from_q as a module's forward (a trace records a module)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, q_short: Tensor, short_len: Tensor, long: Tensor, long_len: Tensor,
                q_unclicked: Tensor, unclicked_len: Tensor, profile: Tensor) -> Tensor:
        return self.model.user_vector_from_q(q_short, short_len, long, long_len, q_unclicked, unclicked_len, profile)


def compile_tower(model: torch.nn.Module) -> Encode:
    """A function equal to `model.user_vector_from_q`; traced when that reproduces `model.user_vector`,
    else the method itself."""
    eager: Encode = model.user_vector_from_q
    if next(model.parameters()).device.type != "cpu":
        return eager  # kernels, not dispatch, dominate on an accelerator
    try:
        traced = _trace(model)
        error = max(_max_error(model, traced, probe) for probe in _PROBES)
    except Exception as exc:  # a model the tracer cannot follow is still servable
        log.warning("user tower served eagerly: tracing failed", extra={"error": repr(exc)})
        return eager
    if error > TOLERANCE:
        log.warning("user tower served eagerly: the trace differs from the model",
                    extra={"max_abs_error": error})
        return eager
    return traced


def _trace(model: torch.nn.Module) -> torch.jit.ScriptModule:
    wrapper = _UserVector(model).eval()
    with torch.no_grad(), warnings.catch_warnings():
        # the tracer warns about every shape it reads; the probes below are what decides
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(wrapper, _inputs(model, _probe_batch(model, 4, (7, 11, 23), (7, 11, 23))),
                                 check_trace=False)
        return torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))


def _max_error(model: torch.nn.Module, traced: torch.jit.ScriptModule,
               probe: tuple[int, tuple[int, int, int], tuple[int, int, int]]) -> float:
    batch = _probe_batch(model, *probe)
    with torch.inference_mode():
        return float((traced(*_inputs(model, batch)) - model.user_vector(batch)).abs().max())


def _probe_batch(model: torch.nn.Module, rows: int, widths: tuple[int, int, int],
                 lengths: tuple[int, int, int]) -> Batch:
    """Random ids within every table; row 0 of each window gets `lengths`, the others random lengths."""
    generator = torch.Generator().manual_seed(rows)
    tables = model.embed.tables

    def window(width: int, first_len: int) -> tuple[Tensor, Tensor]:
        ids = torch.stack([torch.randint(1, max(2, tables[k].num_embeddings), (rows, width), generator=generator)
                           for k in ITEM_KINDS], dim=-1)
        lens = torch.randint(0, width + 1, (rows,), generator=generator)
        lens[0] = first_len
        return ids, lens

    (short, short_len), (long, long_len), (unclicked, unclicked_len) = (
        window(w, n) for w, n in zip(widths, lengths))
    profile_kinds = [profile_kind(f) for f in model.cfg.profile_field_names]
    profile = (torch.stack([torch.randint(0, tables[k].num_embeddings, (rows,), generator=generator)
                            for k in profile_kinds], dim=-1)
               if profile_kinds else torch.zeros(rows, 0, dtype=torch.long))
    return Batch(short=short, short_len=short_len, long=long, long_len=long_len, unclicked=unclicked,
                 unclicked_len=unclicked_len, labels=torch.zeros(rows, 1, 5, dtype=torch.long),
                 label_len=torch.zeros(rows, dtype=torch.long), profile=profile)


def _inputs(model: torch.nn.Module, batch: Batch) -> tuple[Tensor, ...]:
    """user_vector_from_q's arguments for a batch of ids: its windows' q_i computed by the model."""
    with torch.no_grad():
        q_short, q_unclicked = model.q(model.embed, batch.short), model.q(model.embed, batch.unclicked)
    return (q_short, batch.short_len, batch.long, batch.long_len, q_unclicked, batch.unclicked_len, batch.profile)
