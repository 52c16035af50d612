"""Rehearsal memory (learner/rehearsal.py): bounded window, seeded draws, exact resume from a checkpoint."""

from __future__ import annotations

import logging

import pytest

from learner.rehearsal import Rehearsal


def _taken(start: int, n: int, partition: int = 0):
    return [((partition, k), f"sample{k}") for k in range(start, start + n)]


def test_draws_come_from_the_last_window_samples_only():
    memory = Rehearsal(steps=3, window=10, seed=1)
    memory.remember(_taken(0, 25))
    batches = memory.batches(batch_size=4)
    assert len(memory) == 10 and len(batches) == 3
    for batch in batches:
        assert len(batch) == 4 and len(set(batch)) == 4  # without replacement within a batch
        assert all(int(s.removeprefix("sample")) >= 15 for s in batch)


def test_a_batch_is_never_larger_than_what_is_remembered_and_nothing_is_drawn_from_nothing():
    memory = Rehearsal(steps=2, window=100, seed=1)
    assert memory.batches(8) == []
    memory.remember(_taken(0, 3))
    assert [len(b) for b in memory.batches(8)] == [3, 3]


def test_zero_steps_remembers_nothing():
    memory = Rehearsal(steps=0, window=100, seed=1)
    memory.remember(_taken(0, 50))
    assert len(memory) == 0 and memory.batches(8) == []


def test_restored_memory_draws_what_the_uninterrupted_one_draws():
    straight, first = Rehearsal(2, 20, seed=5), Rehearsal(2, 20, seed=5)
    for memory in (straight, first):
        memory.remember(_taken(0, 30))
        memory.batches(6)
    state = first.state_dict()
    assert state["refs"] == [(0, k) for k in range(10, 30)]  # offsets only: the samples stay on the broker
    resumed = Rehearsal(2, 20, seed=99)
    resumed.load_state_dict(state, {ref: sample for ref, sample in _taken(0, 30)})
    for memory in (straight, resumed):
        memory.remember(_taken(30, 5))
    assert resumed.batches(6) == straight.batches(6)


def test_samples_gone_from_the_broker_are_reported_and_the_rest_kept(caplog):
    memory = Rehearsal(1, 20, seed=5)
    memory.remember(_taken(0, 20))
    state = memory.state_dict()
    resumed = Rehearsal(1, 20, seed=5)
    with caplog.at_level(logging.WARNING, logger="learner.rehearsal"):
        resumed.load_state_dict(state, {ref: s for ref, s in _taken(0, 20) if ref[1] >= 12})
    assert len(resumed) == 8
    assert "no longer on the broker" in caplog.text


@pytest.mark.parametrize("steps, window", [(-1, 10), (1, 0)])
def test_bad_settings_are_refused(steps, window):
    with pytest.raises(ValueError):
        Rehearsal(steps, window, seed=0)
