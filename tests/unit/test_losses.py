"""Losses against hand-computed values (learner/losses.py)."""

from __future__ import annotations

import math

import pytest
import torch

from learner import losses


def t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


H, C, N = t([0.0, 0.0]), t([1.0, 0.0]), t([0.0, 2.0])  # d(h,c) = 1, d(h,n) = 4, d(c,n) = 5


def test_triplet_asymmetric_eq4_by_hand():
    assert float(losses.triplet_asymmetric(H, N, C, margin=10.0)) == pytest.approx(1 - 4 + 10)
    assert float(losses.triplet_asymmetric(H, N, C, margin=2.0)) == 0.0  # 1 + 2 <= 4: satisfied


def test_triplet_symmetric_eq5_by_hand():
    assert float(losses.triplet_symmetric(H, N, C, margin=10.0)) == pytest.approx(2 * 1 - 4 - 5 + 10)
    assert float(losses.triplet_symmetric(H, N, C, margin=5.0)) == 0.0


def test_triplets_are_zero_with_zero_gradient_when_the_margin_is_satisfied():
    h = torch.zeros(3, 4, requires_grad=True)
    c = torch.zeros(3, 4, requires_grad=True)
    n = torch.full((3, 4), 3.0, requires_grad=True)  # d(h,n) = d(c,n) = 36 > m* = 5
    for fn in (losses.triplet_asymmetric, losses.triplet_symmetric):
        loss = fn(h, n, c, 5.0)
        loss.backward()
        assert loss.item() == 0.0
        assert all(float(x.grad.abs().sum()) == 0.0 for x in (h, n, c))


def test_losses_are_batch_means_over_the_masked_rows():
    h = t([0.0, 0.0], [0.0, 0.0], [5.0, 5.0])
    c = t([1.0, 0.0], [2.0, 0.0], [5.0, 5.0])
    n = t([0.0, 2.0], [0.0, 1.0], [5.0, 5.0])
    # per row (m=10): 1-4+10 = 7; 4-1+10 = 13; 0-0+10 = 10
    assert float(losses.triplet_asymmetric(h, n, c, 10.0)) == pytest.approx(10.0)
    mask = torch.tensor([True, True, False])
    assert float(losses.triplet_asymmetric(h, n, c, 10.0, mask)) == pytest.approx(10.0)
    assert float(losses.triplet_asymmetric(h, n, c, 10.0, torch.tensor([True, False, False]))) == 7.0
    empty = losses.triplet_symmetric(h.requires_grad_(), n, c, 10.0, torch.zeros(3, dtype=torch.bool))
    empty.backward()
    assert empty.item() == 0.0 and float(h.grad.abs().sum()) == 0.0


def test_pair_losses_of_table3_by_hand():
    assert float(losses.pair_lab_clk(H, C)) == pytest.approx(1.0)
    assert float(losses.pair_unclk_lab(N, C, margin=7.0)) == pytest.approx(7 - 5)
    assert float(losses.pair_unclk_lab(N, C, margin=5.0)) == 0.0
    assert float(losses.pair_unclk_clk(H, N, margin=7.0)) == pytest.approx(7 - 4)
    assert float(losses.pair_unclk_clk(H, N, margin=3.0)) == 0.0


def _ssm(z, w, positives, mask, negatives, log_q_pos=None, log_q_neg=None, bias=None, hits=True):
    log_q_pos = torch.zeros(positives.shape, dtype=z.dtype) if log_q_pos is None else log_q_pos
    log_q_neg = torch.zeros(negatives.shape, dtype=z.dtype) if log_q_neg is None else log_q_neg
    return losses.sampled_softmax_loss(z, w, bias, positives, mask, negatives, log_q_pos, log_q_neg, hits)


W = t([0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.5])  # item output rows 0..4


def test_sampled_softmax_by_hand_with_log_q_correction():
    z = t([2.0, 1.0])
    positives, mask = torch.tensor([[1, 3]]), torch.tensor([[True, True]])
    negatives = torch.tensor([2, 4])
    lq_pos, lq_neg = t([-1.0, -2.0]), torch.tensor([-0.5, -3.0], dtype=torch.float64)
    # logits z·v - log q: pos 2+1 = 3, 3+2 = 5; neg 1+0.5 = 1.5, -1.5+3 = 1.5
    logits = [3.0, 5.0, 1.5, 1.5]
    lse = math.log(sum(math.exp(x) for x in logits))
    expected = -((3.0 - lse) + (5.0 - lse)) / 2
    got = _ssm(z, W, positives, mask, negatives, lq_pos, lq_neg)
    assert float(got) == pytest.approx(expected, rel=1e-12)


def test_sampled_softmax_equals_full_softmax_when_negatives_are_all_other_items():
    torch.manual_seed(0)
    z, w = torch.randn(3, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    positives = torch.tensor([[1], [4], [5]])
    full = torch.nn.functional.cross_entropy(z @ w[1:].T, positives[:, 0] - 1)
    # every item as a negative, constant log q: accidental-hit removal drops each row's own positive
    got = _ssm(z, w, positives, torch.ones(3, 1, dtype=torch.bool), torch.arange(1, 6),
               log_q_neg=torch.full((5,), -math.log(5), dtype=torch.float64),
               log_q_pos=torch.full((3, 1), -math.log(5), dtype=torch.float64))
    assert float(got) == pytest.approx(float(full), rel=1e-10)


def test_accidental_hits_are_removed_only_for_the_row_that_owns_the_label():
    z = t([2.0, 1.0], [0.5, -1.0])
    positives, mask = torch.tensor([[1], [2]]), torch.ones(2, 1, dtype=torch.bool)
    with_hit = _ssm(z, W, positives, mask, torch.tensor([4, 1]))
    without = _ssm(z[:1], W, positives[:1], mask[:1], torch.tensor([4]))
    assert float(_ssm(z[:1], W, positives[:1], mask[:1], torch.tensor([4, 1]))) == pytest.approx(float(without))
    # row 1 keeps negative 1 (not its label): its loss includes it
    row1 = _ssm(z[1:], W, positives[1:], mask[1:], torch.tensor([4, 1]))
    assert float(with_hit) == pytest.approx((float(without) + float(row1)) / 2)
    kept = _ssm(z[:1], W, positives[:1], mask[:1], torch.tensor([4, 1]), hits=False)
    assert float(kept) > float(without)


def test_padded_labels_and_label_less_users_do_not_count():
    z = t([2.0, 1.0], [1.0, 1.0])
    negatives = torch.tensor([2, 4])
    one = _ssm(z[:1], W, torch.tensor([[1]]), torch.tensor([[True]]), negatives)
    padded = _ssm(z, W, torch.tensor([[1, 0], [3, 0]]), torch.tensor([[True, False], [False, False]]), negatives)
    assert float(padded) == pytest.approx(float(one))


def test_sampled_softmax_gradients_are_finite_with_masks_and_hits():
    z = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    w = W.clone().requires_grad_()
    loss = _ssm(z, w, torch.tensor([[1, 2], [0, 0]]), torch.tensor([[True, True], [False, False]]),
                torch.tensor([1, 2, 3]), bias=torch.zeros(5, dtype=torch.float64, requires_grad=True))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all() and torch.isfinite(w.grad).all()
    assert float(z.grad[1].abs().sum()) == 0.0  # label-less user: no gradient
