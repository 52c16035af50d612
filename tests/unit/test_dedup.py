"""The learner's memory of sample ids it already took."""

from __future__ import annotations

import pytest

from learner.dedup import SeenSamples


def test_a_repeat_is_caught_and_the_oldest_id_leaves_past_capacity():
    seen = SeenSamples(3)
    assert [seen.first_time(i) for i in ("a", "b", "a", "c", "d")] == [True, True, False, True, True]
    assert len(seen) == 3
    assert seen.first_time("a")  # "a" was the oldest and left when "d" came
    assert not seen.first_time("d")


def test_the_state_round_trips_and_keeps_the_newest_ids():
    seen = SeenSamples(4)
    for i in "abcdef":
        seen.first_time(i)
    restored = SeenSamples(2)
    restored.load_state_dict(seen.state_dict())
    assert restored.state_dict() == ["e", "f"]
    assert not restored.first_time("f") and restored.first_time("c")


def test_capacity_zero_turns_the_check_off():
    seen = SeenSamples(0)
    assert seen.first_time("a") and seen.first_time("a")
    seen.load_state_dict(["a"])
    assert len(seen) == 0
    with pytest.raises(ValueError):
        SeenSamples(-1)
