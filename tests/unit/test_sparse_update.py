"""Sparse item-table updates (learner.sparse_item_update): the same training as the dense path within
float tolerance, clipping that takes sparse gradients, checkpoints that cross between the two paths."""

from __future__ import annotations

import pytest
import torch

from learner.checkpoint import load_checkpoint, save_checkpoint
from learner.model import config_for
from learner.trainer import SPARSE_AUTO_MIN_ROWS, Trainer, clip_grad_norm
from stream.samples import Sample
from stream.windows import Behavior, Windows
from xdm.records import Item

MODEL = dict(embed_dim=8, n_heads=2, n_negatives=20, dropout=0.1)
# With AdaGrad's accumulator at 0 a gradient of float noise (attention's key bias has a gradient that is
# exactly 0 in exact arithmetic) becomes a full ±lr step whose sign is the noise's: the two paths sum in
# different orders, so only a non-zero start makes their parameters comparable.
ADAGRAD_INIT = 0.1


def _item(i: int) -> Item:
    return Item(f"i{i}", f"leaf{i % 7}", f"top{i % 3}", f"brand{i % 5}", f"shop{i % 4}")


def _batches(n: int = 48, size: int = 8) -> list[list[Sample]]:
    """A stream whose later batches bring new items, so the tables grow between sparse steps."""
    samples = []
    for k in range(n):
        ts, ids = 1_000_000 + 1000 * k, list(range(k // 3, k // 3 + 5))
        short = tuple(Behavior(ts - 10 + j, _item(i)) for j, i in enumerate(ids[:3]))
        unclicked = tuple(Behavior(ts - 5, _item(i + 100)) for i in ids[:2])
        labels = tuple(Behavior(ts + 1 + j, _item(i)) for j, i in enumerate(ids[3:5]))
        samples.append(Sample(f"s{k}", f"u{k % 4}", ts, Windows(short, (), unclicked), labels))
    return [samples[i:i + size] for i in range(0, n, size)]


def _trainer(mode: str) -> Trainer:
    return Trainer(config_for("xdm", **MODEL), seed=3, device="cpu", adagrad_init=ADAGRAD_INIT,
                   sparse_item_update=mode)


def _table_grads_sparse(trainer: Trainer) -> list[bool]:
    return [t.weight.grad.is_sparse for t in trainer.model.vocabulary_tables() if t.weight.grad is not None]


def _assert_close(a: Trainer, b: Trainer, atol: float = 1e-6) -> None:
    for key, value in a.model.state_dict().items():
        torch.testing.assert_close(value, b.model.state_dict()[key], atol=atol, rtol=0, msg=key)
    sums_a, sums_b = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    for index, state in sums_a.items():
        torch.testing.assert_close(state["sum"], sums_b[index]["sum"], atol=atol, rtol=0)


def _trained(mode: str, batches: list[list[Sample]]) -> Trainer:
    """A trainer after `batches` (one at a time: the trainer seeds torch's global RNG, which dropout and
    new rows draw from, so two trainers must not step in turns)."""
    trainer = _trainer(mode)
    for batch in batches:
        trainer.step(batch)
    return trainer


def test_sparse_and_dense_updates_train_the_same_parameters():
    dense = _trained("off", _batches())
    assert not any(_table_grads_sparse(dense))
    sparse = _trained("on", _batches())
    assert all(_table_grads_sparse(sparse))
    assert dense.steps == sparse.steps == len(_batches())
    _assert_close(dense, sparse)


def test_auto_updates_only_the_tables_above_its_size_sparsely():
    trainer = _trainer("auto")
    trainer.model.grow_to({"item": SPARSE_AUTO_MIN_ROWS + 1})
    trainer.optimizer = trainer._adagrad(trainer.lr)
    before = trainer.model.item_out.weight.detach().clone()
    trainer.step(_batches()[0])
    sparse = {name: t.weight.grad.is_sparse for name, t in trainer.model.embed.tables.items()}
    assert sparse == {"item": True, "leaf": False, "top": False, "brand": False, "shop": False}
    assert trainer.model.item_out.weight.grad.is_sparse
    moved = (trainer.model.item_out.weight.detach() != before).any(dim=1).nonzero().flatten()
    assert 0 < moved.numel() < 200  # the rows of one batch and its negatives, not the table


def test_a_small_catalogue_trains_dense_under_auto_exactly_as_before():
    auto = _trained("auto", _batches()[:3])
    dense = _trained("off", _batches()[:3])
    assert not any(_table_grads_sparse(auto))
    for key, value in auto.model.state_dict().items():
        assert torch.equal(value, dense.model.state_dict()[key]), key


@pytest.mark.parametrize("max_norm", [0.05, 1e6])  # clipping, and a norm under the limit
def test_clipping_sparse_gradients_equals_torchs_clipping_of_the_dense_ones(max_norm):
    gen = torch.Generator().manual_seed(1)
    table = torch.nn.Parameter(torch.randn(50, 4, generator=gen))
    dense = torch.nn.Parameter(torch.randn(3, 4, generator=gen))
    rows = torch.tensor([[7, 3, 7, 40, 3]])  # repeated rows: uncoalesced, as autograd hands them over
    table.grad = torch.sparse_coo_tensor(rows, torch.randn(5, 4, generator=gen), table.shape)
    dense.grad = torch.randn(3, 4, generator=gen)
    reference = [torch.nn.Parameter(table.detach().clone()), torch.nn.Parameter(dense.detach().clone())]
    reference[0].grad, reference[1].grad = table.grad.to_dense(), dense.grad.clone()

    expected = torch.nn.utils.clip_grad_norm_(reference, max_norm)
    total = clip_grad_norm([table, dense], max_norm)

    torch.testing.assert_close(total, expected, rtol=1e-6, atol=0)
    assert table.grad.is_sparse
    torch.testing.assert_close(table.grad.to_dense(), reference[0].grad, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(dense.grad, reference[1].grad, rtol=1e-6, atol=1e-7)


def test_a_sparse_trainer_resumes_exactly_from_its_checkpoint(tmp_path):
    batches = _batches()
    straight = _trained("on", batches)
    first = _trained("on", batches[:3])
    save_checkpoint(str(tmp_path), "arm", {"trainer": first.state_dict()})
    resumed = _trainer("on")
    resumed.load_state_dict(load_checkpoint(str(tmp_path), "arm")["trainer"])
    for batch in batches[3:]:
        resumed.step(batch)
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_a_dense_checkpoint_goes_on_training_sparse(tmp_path):
    batches = _batches()
    straight = _trained("off", batches)
    first = _trained("off", batches[:3])
    save_checkpoint(str(tmp_path), "arm", {"trainer": first.state_dict()})
    resumed = _trainer("on")
    resumed.load_state_dict(load_checkpoint(str(tmp_path), "arm")["trainer"])
    for batch in batches[3:]:
        resumed.step(batch)
    assert all(_table_grads_sparse(resumed))
    _assert_close(straight, resumed)
