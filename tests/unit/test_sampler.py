"""Log-uniform negative sampler (learner/sampler.py)."""

from __future__ import annotations

import math

import pytest
import torch

from learner.sampler import LogUniformSampler

COUNTS = [0, 5, 50, 0, 7, 50, 1, 30, 2, 9, 3]  # row 0 is padding; N = 10


def expected_p(rank: int, n: int) -> float:
    return (math.log(rank + 2) - math.log(rank + 1)) / math.log(n + 1)


def test_rows_are_ranked_by_count_with_ties_in_row_order():
    sampler = LogUniformSampler(COUNTS)
    p = sampler.probabilities()
    assert sampler.n_items == 10
    assert p[0] == 0
    assert abs(float(p.sum()) - 1) < 1e-12
    # ranks: rows 2, 5 (50, tie -> row order), 7 (30), 9, 4, 1, 10, 8, 6, 3 (count 0 last)
    for rank, row in enumerate([2, 5, 7, 9, 4, 1, 10, 8, 6, 3]):
        assert float(p[row]) == pytest.approx(expected_p(rank, 10), rel=1e-12)


def test_empirical_distribution_matches_the_formula_and_never_draws_padding():
    sampler = LogUniformSampler(COUNTS)
    draws = 200_000
    ids, log_q = sampler.sample(draws, torch.Generator().manual_seed(0))
    assert ids.shape == (draws,) and ids.dtype == torch.long
    assert int(ids.min()) >= 1 and int(ids.max()) <= 10
    observed = torch.bincount(ids, minlength=11)[1:].double()
    expected = sampler.probabilities()[1:] * draws
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    assert chi2 < 35.0  # df = 9: P(chi2 > 33.7) = 1e-4 for a correct sampler
    assert torch.allclose(log_q, sampler.log_q(ids))


def test_log_q_is_log_probability_with_padding_and_new_rows_handled():
    sampler = LogUniformSampler(COUNTS)
    p = sampler.probabilities()
    ids = torch.tensor([[2, 3], [0, 12]])
    log_q = sampler.log_q(ids)
    assert log_q.shape == (2, 2) and log_q.dtype == torch.float32
    assert float(log_q[0, 0]) == pytest.approx(math.log(float(p[2])), rel=1e-6)
    assert float(log_q[1, 0]) == 0.0  # padding: never drawn, only ever masked
    assert float(log_q[1, 1]) == pytest.approx(math.log(expected_p(9, 10)), rel=1e-6)  # grown since: tail


def test_update_counts_re_ranks_items():
    sampler = LogUniformSampler([0, 10, 1, 1])
    before = sampler.probabilities()[1].item()
    sampler.update_counts([0, 1, 1, 10, 0])
    after = sampler.probabilities()
    assert sampler.n_items == 4
    assert after[3] > after[1] and after[1].item() < before
    assert after[4] == after[1:].min()  # unclicked new item is last


def test_sampling_is_deterministic_under_a_seed():
    sampler = LogUniformSampler(COUNTS)
    a = sampler.sample(100, torch.Generator().manual_seed(5))
    b = sampler.sample(100, torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_state_dict_round_trip():
    sampler = LogUniformSampler(COUNTS)
    restored = LogUniformSampler([0, 1])
    restored.load_state_dict(sampler.state_dict())
    assert torch.equal(restored.probabilities(), sampler.probabilities())
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert torch.equal(restored.sample(50, g1)[0], sampler.sample(50, g2)[0])


def test_invalid_inputs_raise():
    with pytest.raises(ValueError, match="at least one item"):
        LogUniformSampler([0])
    with pytest.raises(ValueError, match="non-negative"):
        LogUniformSampler([0, -1])
    with pytest.raises(ValueError, match="at least 1"):
        LogUniformSampler([0, 1]).sample(0)
