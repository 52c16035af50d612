"""Log-uniform negative sampler (learner/sampler.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

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


# ---- incremental ranks (set_counts): exact, at a cost that follows the rows that changed

def _check_ranking(sampler: LogUniformSampler, counts: np.ndarray) -> None:
    """The sampler's ranking is one a full re-rank could give: same count at every rank, inverse maps."""
    n = counts.size - 1
    assert sampler.n_items == n
    assert np.array_equal(sampler.counts(), counts)
    order = sampler.state_dict()["order"].numpy()
    full = LogUniformSampler(counts).state_dict()["order"].numpy()
    assert np.array_equal(np.sort(order), np.arange(1, n + 1))
    assert np.array_equal(counts[order], counts[full])  # equal up to the order of ties
    p = sampler.probabilities().numpy()
    for rank, row in enumerate(order):
        assert p[row] == pytest.approx(expected_p(rank, n), rel=1e-9)


updates = st.lists(st.tuples(st.integers(1, 40), st.integers(0, 12)), max_size=12)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 12), min_size=1, max_size=30), st.lists(updates, max_size=10))
def test_incremental_ranks_equal_a_full_re_rank(initial, steps):
    counts = np.array([0, *initial], dtype=np.int64)
    sampler = LogUniformSampler(counts)
    for step in steps:
        rows, values = [r for r, _ in step], [v for _, v in step]
        sampler.set_counts(rows, values)
        counts = np.pad(counts, (0, max(0, max(rows, default=0) + 1 - counts.size)))
        for row, value in step:
            counts[row] = value
        _check_ranking(sampler, counts)


def test_a_count_that_rises_by_one_moves_at_most_two_ranks():
    rng = np.random.default_rng(0)
    counts = np.r_[0, rng.integers(0, 50, 200_000)]
    sampler = LogUniformSampler(counts)
    for row in rng.integers(1, 200_001, 50).tolist():
        before = sampler.state_dict()["order"].numpy()
        sampler.set_counts([row], [int(sampler.counts()[row]) + 1])
        assert int((sampler.state_dict()["order"].numpy() != before).sum()) <= 2


def test_ties_after_updates_follow_the_history_documented():
    sampler = LogUniformSampler([0, 1, 1, 1, 0])  # ranks: rows 1, 2, 3 (count 1, row order), 4
    sampler.set_counts([4], [1])  # a row that rises joins the end of its new bucket
    assert sampler.state_dict()["order"].tolist() == [1, 2, 3, 4]
    sampler.set_counts([3], [2])  # it swaps with the bucket's first row (1) on its way up
    assert sampler.state_dict()["order"].tolist() == [3, 2, 1, 4]
    sampler.set_counts([3], [0])  # a row that falls joins the front of its new bucket
    assert sampler.state_dict()["order"].tolist() == [4, 2, 1, 3]


def test_new_rows_rank_last_and_log_q_follows_the_incremental_ranks():
    sampler = LogUniformSampler(COUNTS)
    sampler.set_counts([3, 12], [60, 4])  # row 3 to the top; row 12 is new (row 11 grows in with count 0)
    order = sampler.state_dict()["order"].tolist()
    assert sampler.n_items == 12 and order[0] == 3 and order[-1] == 11
    ids = torch.tensor(order)
    expected = torch.tensor([math.log(expected_p(r, 12)) for r in range(12)])
    assert torch.allclose(sampler.log_q(ids), expected.float(), rtol=1e-6)


def test_sample_distribution_after_incremental_updates_matches_the_formula():
    sampler = LogUniformSampler(COUNTS)
    sampler.set_counts([1, 3, 6, 11], [80, 6, 50, 2])
    draws = 200_000
    ids, log_q = sampler.sample(draws, torch.Generator().manual_seed(0))
    observed = torch.bincount(ids, minlength=12)[1:].double()
    expected = sampler.probabilities()[1:] * draws
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    assert chi2 < 38.0  # df = 10: P(chi2 > 35.6) = 1e-4 for a correct sampler
    assert torch.allclose(log_q, sampler.log_q(ids))


def test_state_dict_keeps_the_tie_order_and_old_checkpoints_load():
    sampler = LogUniformSampler(COUNTS)
    sampler.set_counts([3, 1, 6], [50, 50, 9])
    restored = LogUniformSampler([0, 1])
    restored.load_state_dict(sampler.state_dict())
    assert torch.equal(restored.state_dict()["order"], sampler.state_dict()["order"])
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert torch.equal(restored.sample(50, g1)[0], sampler.sample(50, g2)[0])
    old = LogUniformSampler([0, 1])
    old.load_state_dict({"counts": torch.tensor(COUNTS, dtype=torch.float64)})  # saved before "order"
    assert old.state_dict()["order"].tolist() == [2, 5, 7, 9, 4, 1, 10, 8, 6, 3]


def test_inconsistent_state_and_updates_raise():
    sampler = LogUniformSampler(COUNTS)
    state = sampler.state_dict()
    with pytest.raises(ValueError, match="permutation"):
        sampler.load_state_dict({"counts": state["counts"], "order": state["order"][:-1]})
    with pytest.raises(ValueError, match="descending"):
        sampler.load_state_dict({"counts": state["counts"], "order": state["order"].flip(0)})
    with pytest.raises(ValueError, match="padding"):
        sampler.set_counts([0], [1])
    with pytest.raises(ValueError, match="non-negative"):
        sampler.set_counts([1], [-1])
    with pytest.raises(ValueError, match="one count per row"):
        sampler.set_counts([1, 2], [1])
