"""Progressive validation (learner/progressive.py): exact up to a catalogue size, sampled above it."""

from __future__ import annotations

import math

import pytest
import torch

from learner.batch import collate
from learner.model import config_for
from learner.progressive import ValidationSampling, sampled_ranks, validate_every_item, validate_sampled
from learner.trainer import Trainer
from stream.samples import Sample
from stream.windows import Behavior, Windows
from xdm.records import Item

MODEL = dict(embed_dim=8, n_heads=2, n_negatives=20, dropout=0.1)
SAMPLED = ValidationSampling(full_max_items=1, users=3, items=7)


def _item(i: int) -> Item:
    return Item(f"i{i}", f"leaf{i % 7}", f"top{i % 3}", f"brand{i % 5}", f"shop{i % 4}")


def _stream(n: int) -> list[Sample]:
    out = []
    for k in range(n):
        ids = range(k % 9, k % 9 + 5)
        ts = 1_000_000 + 1000 * k
        short = tuple(Behavior(ts - 10 + j, _item(i)) for j, i in enumerate(ids[:3]))
        labels = tuple(Behavior(ts + 1 + j, _item(i)) for j, i in enumerate(ids[3:5]))
        out.append(Sample(f"s{k}", f"u{k % 4}", ts, Windows(short, (), ()), labels))
    return out


def _trained(validation: ValidationSampling | None = None) -> Trainer:
    trainer = Trainer(config_for("xdm", **MODEL), seed=3, device="cpu", validation=validation)
    for start in range(0, 32, 8):
        trainer.step(_stream(32)[start:start + 8])
    trainer.model.eval()
    return trainer


def _exact_best_label_ranks(trainer: Trainer, batch) -> torch.Tensor:
    scores = trainer.model.full_sort_predict(batch)
    labels = batch.labels[..., 0]
    best = torch.stack([scores[b, labels[b, :n]].max() for b, n in enumerate(batch.label_len.tolist())])
    return 1.0 + (scores > best.unsqueeze(1)).sum(dim=1).double()


def test_below_the_size_every_item_is_ranked_and_training_is_unchanged():
    exact, sampled = _trained(), _trained(SAMPLED)
    batch = collate(_stream(16), exact.vocab, grow=False)
    assert exact.progressive_validation(batch) == validate_every_item(exact.model, batch)
    # sampled validation draws from its own generator: the same steps train the same model
    for key, value in exact.model.state_dict().items():
        assert torch.equal(value, sampled.model.state_dict()[key]), key
    assert exact.progressive_validation(batch) != sampled.progressive_validation(batch)  # 3 of 16 samples


def test_above_the_size_with_every_item_drawn_the_ranks_are_exact():
    trainer = _trained()
    batch = collate(_stream(16), trainer.vocab, grow=False)
    everything = ValidationSampling(full_max_items=1, users=16, items=10**6)
    ranks = sampled_ranks(trainer.model, batch, everything, torch.Generator().manual_seed(0))
    assert sorted(ranks.tolist()) == sorted(_exact_best_label_ranks(trainer, batch).tolist())
    hr, mrr = validate_sampled(trainer.model, batch, everything, torch.Generator().manual_seed(0))
    full_hr, full_mrr = validate_every_item(trainer.model, batch)
    assert hr == pytest.approx(full_hr) and mrr == pytest.approx(full_mrr)


def test_sampled_items_give_an_unbiased_rank_and_the_documented_hit_rate():
    trainer = _trained()
    n, rank, draws = 5000, 50, 400
    trainer.model.grow_to({"item": n + 1})
    batch = collate(_stream(1), trainer.vocab, grow=False)
    label = int(batch.labels[0, 0, 0])
    z = trainer.model.user_vector(batch)[0]
    with torch.no_grad():  # item i scores -i, the label scores just below rank - 1 items
        scores = -torch.arange(n + 1, dtype=torch.float32)
        scores[label] = -(rank - 1) - 0.5
        scores[int(batch.labels[0, 1, 0])] = -10 * n  # the other label is far down
        trainer.model.item_out.weight[:] = scores.unsqueeze(1) * (z / z.dot(z)).unsqueeze(0)
    sampling = ValidationSampling(full_max_items=1, users=1, items=500)
    generator = torch.Generator().manual_seed(0)
    ranks = torch.cat([sampled_ranks(trainer.model, batch, sampling, generator) for _ in range(draws)])
    true_rank = 1 + int((scores[1:] > scores[label]).sum())  # the labels' own rows are among the top ones
    assert rank - 2 <= true_rank <= rank and _exact_best_label_ranks(trainer, batch).tolist() == [true_rank]
    sd = math.sqrt((true_rank - 1) * (n - true_rank + 1) / 500 / draws)
    assert abs(float(ranks.mean()) - true_rank) < 4 * sd
    # a hit when k <= floor(49 S / N) = 4 sampled items score above: P = BinomCDF(4; 500, (r - 1) / N)
    p = (true_rank - 1) / n
    expected = sum(math.comb(500, k) * p**k * (1 - p) ** (500 - k) for k in range(5))
    hits = float((ranks <= 50).double().mean())
    assert abs(hits - expected) < 4 * math.sqrt(expected * (1 - expected) / draws)
