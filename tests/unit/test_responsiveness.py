"""Responsiveness (learner/responsiveness.py): skipping an item moves nothing for a row without the plug-in,
moves nothing at k = 0 or below the exposure rule, and pushes the item down where the plug-in subtracts it."""

from __future__ import annotations

import pytest
import torch

from learner.batch import collate
from learner.model import config_for
from learner.responsiveness import OUT_RANK, responsiveness, skipped, state_of
from learner.trainer import Trainer
from stream.samples import Sample
from stream.windows import Behavior, Windows, snapshot
from tests.unit.model_inputs import TINY, item
from xdm.stream_rules import SampleRules, WindowRules

N_ITEMS = 80
ANCHOR = 10_000_000
RULES, SAMPLE_RULES = WindowRules(), SampleRules()
CATALOGUE = {item(i).item_id: item(i) for i in range(N_ITEMS)}


def _sample(n: int, unclicked: tuple[int, ...] = ()) -> Sample:
    clicks = [(n + 7 * j) % N_ITEMS for j in range(4)]
    short = tuple(Behavior(ANCHOR - 1000 * (4 - j), item(i)) for j, i in enumerate(clicks))
    skips = tuple(Behavior(ANCHOR - 500 + j, item(i)) for j, i in enumerate(unclicked))
    labels = tuple(Behavior(ANCHOR + 1 + j, item((n + 3 + j) % N_ITEMS)) for j in range(3))
    return Sample(f"s{n}", f"u{n}", ANCHOR, Windows(short, (), skips), labels)


def _trainer(variant: str) -> Trainer:
    trainer = Trainer(config_for(variant, **TINY), seed=3, device="cpu")
    samples = [_sample(n, unclicked=((n + 40) % N_ITEMS,)) for n in range(N_ITEMS)]
    for start in range(0, N_ITEMS, 16):  # a few steps, so every item has a row
        trainer.step(samples[start:start + 16])
    return trainer


def _force_subtraction(trainer: Trainer) -> None:
    """G ≈ 1 (z = h - n, eqs. 7-8), n ≈ sign(q_i) when i alone is skipped, and each item's output vector along
    the sign of its own q: a skipped item loses more score than any item unlike it."""
    model, vocab = trainer.model, trainer.vocab
    dim = model.item_out.weight.shape[1]
    with torch.no_grad():
        model.confidence.confidence.weight.zero_()
        model.confidence.confidence.bias.fill_(20.0)
        model.unclicked.ffn.weight.copy_(200.0 * torch.eye(dim))
        model.unclicked.ffn.bias.zero_()
        every = Sample("all", "all", ANCHOR, Windows(tuple(Behavior(0, c) for c in CATALOGUE.values()), (), ()), ())
        q = model.q(model.embed, collate([every], vocab, grow=False).short)[0]
        rows = torch.tensor([vocab.lookup("item", i) for i in CATALOGUE])
        model.item_out.weight[rows] = torch.sign(q)


def _users() -> list[Sample]:
    return [_sample(n) for n in range(0, N_ITEMS, 3)]


def test_rebuilt_state_gives_the_windows_back():
    sample = _sample(5, unclicked=(60, 61))
    assert snapshot(state_of(sample, RULES), ANCHOR, RULES) == sample.windows


def test_skips_enter_the_window_by_the_stream_rules():
    sample, target = _sample(5, unclicked=(60,)), item(70)
    assert skipped(sample, target, 0, RULES, SAMPLE_RULES) is sample
    once = skipped(sample, target, 1, RULES, SAMPLE_RULES).windows.unclicked
    assert [b.item.item_id for b in once] == ["i60"]  # one impression is below unclicked_min_exposures
    twice = skipped(sample, target, 2, RULES, SAMPLE_RULES).windows.unclicked
    assert [b.item.item_id for b in twice] == ["i60", "i70"]
    assert twice[-1].ts_ms == ANCHOR + 2 * 60_000


def test_a_row_without_the_plug_in_does_not_move():
    report = responsiveness(_trainer("sdm"), _users(), CATALOGUE, (0, 1, 2, 5), RULES, SAMPLE_RULES, n_boot=50)
    assert report["users"] == len(_users())
    for k in (0, 1, 2, 5):
        values = report["per_k"][k]["per_user"]
        assert set(values["rank_after"]) == {1.0}
        assert set(values["left_top"]) == {0.0} and set(values["leaf_change"]) == {0.0}
    # the window changed wherever the stream lets the item in (not where it was clicked within the span)
    assert 1.0 in report["per_k"][5]["per_user"]["in_window"]


def test_a_plug_in_that_subtracts_the_window_pushes_the_skipped_item_down():
    trainer = _trainer("xdm")
    _force_subtraction(trainer)
    report = responsiveness(trainer, _users(), CATALOGUE, (0, 1, 2, 5), RULES, SAMPLE_RULES, n_boot=50)
    for k in (0, 1):  # no skip, and one below the exposure rule: nothing enters the window
        assert set(report["per_k"][k]["per_user"]["rank_after"]) == {1.0}
    for k in (2, 5):
        summary = report["per_k"][k]["summary"]
        assert summary["rank_after"]["low"] > 10
        assert summary["left_top"]["mean"] > 0.5
        assert report["per_k"][k]["rank_median"] == OUT_RANK


def test_negative_k_is_refused():
    with pytest.raises(ValueError, match="must not be negative"):
        responsiveness(_trainer("sdm"), _users(), CATALOGUE, (-1,), RULES, SAMPLE_RULES, n_boot=10)
