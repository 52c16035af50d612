"""The trainer: determinism and exact resume, item eviction with row reuse, non-finite losses."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from learner.model import config_for
from learner.trainer import Trainer
from stream.samples import Sample
from stream.windows import Behavior, Windows
from xdm.records import Item

MODEL = dict(embed_dim=8, n_heads=2, n_negatives=20, dropout=0.1)


def _item(i: int) -> Item:
    return Item(f"i{i}", f"leaf{i % 7}", f"top{i % 3}", f"brand{i % 5}", f"shop{i % 4}")


def _sample(n: int, ts: int, items: range) -> Sample:
    ids = list(items)
    short = tuple(Behavior(ts - 10 + k, _item(i)) for k, i in enumerate(ids[:3]))
    unclicked = tuple(Behavior(ts - 5, _item(i + 100)) for i in ids[:2])
    labels = tuple(Behavior(ts + 1 + k, _item(i)) for k, i in enumerate(ids[3:5]))
    return Sample(f"s{n}", f"u{n % 4}", ts, Windows(short, (), unclicked), labels)


def _stream(n: int, offset: int = 0) -> list[Sample]:
    return [_sample(k, 1_000_000 + 1000 * k, range(offset + k % 9, offset + k % 9 + 5)) for k in range(n)]


def _trainer() -> Trainer:
    return Trainer(config_for("xdm", **MODEL), seed=3, device="cpu")


def _batches(samples, size=8):
    return [samples[i:i + size] for i in range(0, len(samples), size)]


def test_resumed_training_equals_uninterrupted_training():
    batches = _batches(_stream(48))
    straight = _trainer()
    for batch in batches:
        straight.step(batch)

    first = _trainer()
    for batch in batches[:3]:
        first.step(batch)
    state = first.state_dict()
    resumed = _trainer()
    resumed.load_state_dict(state)
    for batch in batches[3:]:
        resumed.step(batch)

    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_training_lowers_the_loss():
    trainer = _trainer()
    batch = _stream(16)
    first = trainer.step(batch).loss
    for _ in range(15):
        last = trainer.step(batch).loss
    assert last < first


def test_evicted_item_rows_are_reused_and_reinitialised():
    trainer = _trainer()
    for batch in _batches(_stream(16)):
        trainer.step(batch)
    rows_before = trainer.vocab.size("item")
    # every item so far was last seen before this time: all are evicted
    evicted = trainer.evict_items(before_ms=10**12)
    assert evicted == rows_before - 1
    assert trainer.item_vectors()[0] == []
    old_weight = trainer.model.item_out.weight.detach().clone()
    trainer.step(_stream(8, offset=500))  # brand-new items take the freed rows
    assert trainer.vocab.size("item") <= rows_before  # no growth: rows were recycled
    reused = [r for r in trainer.vocab.live_items()]
    assert reused and all(r < rows_before for r in reused)
    ids, vectors = trainer.item_vectors()
    assert all(i.startswith("i5") or i.startswith("i6") for i in ids)
    assert not torch.equal(trainer.model.item_out.weight[reused], old_weight[reused])


def test_non_finite_loss_never_reaches_the_parameters():
    trainer = _trainer()
    batch = _stream(8)
    trainer.step(batch)
    with torch.no_grad():
        trainer.model.item_out.weight[1:] = float("nan")
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    stats = trainer.step(batch)
    assert stats.skipped and math.isnan(stats.loss)
    assert trainer.skipped_steps == 1
    after = trainer.model.state_dict()
    for key in before:
        assert torch.equal(torch.nan_to_num(before[key]), torch.nan_to_num(after[key])), key


def test_adagrad_accumulator_starts_at_its_initial_value_for_every_row():
    trainer = Trainer(config_for("xdm", **MODEL), seed=3, device="cpu", adagrad_init=0.1)
    weight = trainer.model.item_out.weight
    trainer.step(_stream(8))
    before = weight.detach().clone()
    grown_from = trainer.vocab.size("item")
    trainer.step(_stream(8, offset=300))  # new items: the tables and the accumulators grow
    state = trainer.optimizer.state[weight]["sum"]
    assert state.shape == weight.shape
    # grown rows start from the initial value (torch's own growth path would give them 0)
    assert grown_from < weight.shape[0] and torch.all(state[grown_from:] >= 0.1 - 1e-7)
    # with a non-zero initial accumulator a first update is a fraction of lr, not ±lr on every weight
    step = (weight.detach()[:before.shape[0]] - before).abs().max().item()
    assert 0 < step < 0.1
    trainer.evict_items(before_ms=10**12)
    trainer.step(_stream(8, offset=600))  # recycled rows: accumulators back at the initial value first
    assert torch.all(trainer.optimizer.state[weight]["sum"] >= 0.1 - 1e-7)


def test_learning_rate_ramps_in_over_the_warmup_steps():
    trainer = Trainer(config_for("xdm", **MODEL), seed=3, device="cpu", lr=0.1, lr_warmup_steps=4)
    seen = []
    for k in range(6):
        trainer.step(_stream(8, offset=10 * k))
        seen.append(trainer.optimizer.param_groups[0]["lr"])
    assert seen == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1])
    # with torch's zero accumulator the first update is ±lr on every weight: warm-up makes it lr / 4
    fresh = Trainer(config_for("xdm", **MODEL), seed=3, device="cpu", lr=0.1, lr_warmup_steps=4)
    before = fresh.model.item_out.weight.detach().clone()
    fresh.step(_stream(8))
    assert (fresh.model.item_out.weight.detach()[:before.shape[0]] - before).abs().max().item() <= 0.025 + 1e-6


def test_the_warmup_resumes_from_a_checkpoint_at_the_step_it_reached():
    trainer = Trainer(config_for("xdm", **MODEL), seed=3, device="cpu", lr=0.1, lr_warmup_steps=10)
    for k in range(3):
        trainer.step(_stream(8, offset=10 * k))
    restored = Trainer(config_for("xdm", **MODEL), seed=3, device="cpu", lr=0.1, lr_warmup_steps=10)
    restored.load_state_dict(trainer.state_dict())
    restored.step(_stream(8, offset=40))
    assert restored.optimizer.param_groups[0]["lr"] == pytest.approx(0.04)


def test_a_rehearsal_step_trains_without_counting_labels_scoring_or_adding_samples():
    trainer = _trainer()
    batch = _stream(8)
    trainer.step(batch)
    counts, seen = list(trainer.vocab.counts), trainer.samples_seen
    before = [p.detach().clone() for p in trainer.model.parameters()]

    stats = trainer.step(batch, rehearsal=True)

    assert trainer.vocab.counts == counts  # the sampler's frequencies stay the stream's
    assert trainer.samples_seen == seen
    assert math.isnan(stats.hr50) and math.isnan(stats.mrr50)  # not out of sample: no progressive score
    assert trainer.steps == 2
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))


class _RunsCode:
    """A pickle whose loading would create a marker file: what an attacker would put at a checkpoint path."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_checkpoint_round_trips_through_the_weights_only_loader(tmp_path):
    import random

    from learner.checkpoint import load_checkpoint, save_checkpoint

    trainer = _trainer()
    for batch in _batches(_stream(16)):
        trainer.step(batch)
    save_checkpoint(str(tmp_path), "xdm", {"trainer": trainer.state_dict(), "offsets": {0: 12}, "version": 3,
                                           "seen": ["s1", "s2"], "rehearsal": {"refs": [(0, 5)],
                                                                                "rng": random.Random(1).getstate()}})
    state = load_checkpoint(str(tmp_path), "xdm")
    restored = _trainer()
    restored.load_state_dict(state["trainer"])
    assert state["offsets"] == {0: 12} and state["rehearsal"]["refs"] == [(0, 5)]
    assert restored.steps == trainer.steps


def test_a_crafted_checkpoint_runs_nothing(tmp_path):
    import pickle

    from learner.checkpoint import checkpoint_path, load_checkpoint

    marker = tmp_path / "ran"
    path = checkpoint_path(str(tmp_path), "xdm")
    path.parent.mkdir(parents=True)
    torch.save({"trainer": _RunsCode(marker)}, path)
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(str(tmp_path), "xdm")
    assert not marker.exists()


def _later(n: int, offset: int, ts: int) -> list[Sample]:
    return [_sample(k, ts + 1000 * k, range(offset + k % 9, offset + k % 9 + 5)) for k in range(n)]


def test_the_sampler_ranks_by_the_vocabulary_counts_through_growth_and_eviction():
    trainer = _trainer()
    for batch in _batches(_stream(24)) + _batches(_later(16, 30, 2_000_000)):
        trainer.step(batch)
        counts = np.asarray(trainer.vocab.counts)
        assert np.array_equal(trainer.sampler.counts(), counts)
        assert np.all(np.diff(counts[trainer.sampler.state_dict()["order"].numpy()]) <= 0)
    assert trainer.evict_items(before_ms=1_500_000) > 0  # the first stream's items
    trainer.step(_later(8, 60, 3_000_000))  # new items take the evicted rows
    counts = np.asarray(trainer.vocab.counts)
    assert np.array_equal(trainer.sampler.counts(), counts)
    assert np.all(np.diff(counts[trainer.sampler.state_dict()["order"].numpy()]) <= 0)


def test_resuming_between_an_eviction_and_the_next_step_equals_uninterrupted_training():
    before = _batches(_stream(16)) + _batches(_later(8, 30, 2_000_000))
    after = _batches(_later(16, 30, 2_100_000))
    straight = _trainer()
    for batch in before:
        straight.step(batch)
    assert straight.evict_items(before_ms=1_500_000) > 0  # counted rows fall to 0 after the sampler's last step
    state = copy.deepcopy(straight.state_dict())  # a checkpoint on disk shares no tensor with the live trainer
    for batch in after:
        straight.step(batch)
    resumed = _trainer()
    resumed.load_state_dict(state)  # also restores torch's global RNG, which both trainers' dropout draws from
    for batch in after:
        resumed.step(batch)
    assert torch.equal(resumed.sampler.state_dict()["order"], straight.sampler.state_dict()["order"])
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
