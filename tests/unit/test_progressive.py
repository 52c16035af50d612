"""Progressive validation (learner/progressive.py): exact up to a catalogue size, sampled above it."""

from __future__ import annotations

import math

import pytest
import torch

from learner.batch import collate
from learner.model import config_for
from learner.progressive import (ValidationSampling, sampled_ranks, systematic_rows, validate_every_item,
                                 validate_sampled)
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
    n, above, draws = 5000, 49, 400
    trainer.model.grow_to({"item": n + 1})
    batch = collate(_stream(1), trainer.vocab, grow=False)
    labels = batch.labels[0, :2, 0].tolist()
    z = trainer.model.user_vector(batch)[0]
    others = torch.tensor([row for row in range(1, n + 1) if row not in labels])
    sampling = ValidationSampling(full_max_items=1, users=1, items=500)
    generator, shuffle = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    ranks = []
    for _ in range(draws):  # the items above the best label lie at new random rows each time
        scores = torch.zeros(n + 1)
        scores[others] = -1.0 - torch.randperm(others.numel(), generator=shuffle).float()
        scores[labels[0]], scores[labels[1]] = -above - 0.5, -10.0 * n  # exactly `above` items score higher
        with torch.no_grad():
            trainer.model.item_out.weight[:] = scores.unsqueeze(1) * (z / z.dot(z)).unsqueeze(0)
        ranks.append(sampled_ranks(trainer.model, batch, sampling, generator))
    ranks = torch.cat(ranks)
    assert _exact_best_label_ranks(trainer, batch).tolist() == [above + 1]
    drawn = systematic_rows(n, 500, generator).numel()  # 7 runs of 64 rows
    # k, the drawn rows above the label, is hypergeometric: n rows, `above` of them above, `drawn` drawn
    pmf = [math.comb(above, k) * math.comb(n - above, drawn - k) / math.comb(n, drawn) for k in range(above + 1)]
    sd = math.sqrt(sum(p * (1 + k * n / drawn - above - 1) ** 2 for k, p in enumerate(pmf)) / draws)
    assert abs(float(ranks.mean()) - (above + 1)) < 4 * sd  # unbiased
    expected = sum(pmf[: 49 * drawn // n + 1])  # a hit when k <= floor(49 S / N) = 4
    hits = float((ranks <= 50).double().mean())
    assert abs(hits - expected) < 4 * math.sqrt(expected * (1 - expected) / draws)


def test_systematic_rows_take_every_row_with_the_same_probability():
    n, size, draws = 1000, 128, 4000
    generator = torch.Generator().manual_seed(0)
    seen = torch.zeros(n + 1)
    for _ in range(draws):
        rows = systematic_rows(n, size, generator)
        assert rows.numel() == size and rows.unique().numel() == size
        assert int(rows.min()) >= 1 and int(rows.max()) <= n
        seen[rows] += 1
    share = seen[1:] / draws
    assert float((share - size / n).abs().max()) < 5 * math.sqrt(size / n * (1 - size / n) / draws)
