"""The importers' bounded-memory time sort: any input order and buffer size give the stable sort by time."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from importers import output
from importers.output import TimeSorter
from importers.user_sample import sample_users
from xdm.records import Event


def _events(stamps: list[int]) -> list[Event]:
    return [Event(f"e{i}", ts, f"u{i % 3}", f"i{i % 5}", "impression" if i % 2 else "click", f"r{i}", i)
            for i, ts in enumerate(stamps)]


def _sorted(events: list[Event], buffer_events: int, scratch: Path) -> list[Event]:
    sorter = TimeSorter(scratch, buffer_events)
    for event in events:
        sorter.add(event)
    return list(sorter.sorted_events())


@settings(max_examples=40, deadline=None)
@given(stamps=st.lists(st.integers(0, 20), max_size=40), buffer_events=st.integers(1, 8))
def test_any_order_and_buffer_give_the_stable_sort_by_time(stamps: list[int], buffer_events: int) -> None:
    events = _events(stamps)
    with tempfile.TemporaryDirectory() as scratch:
        assert _sorted(events, buffer_events, Path(scratch)) == sorted(events, key=lambda e: e.ts_ms)


def test_more_runs_than_files_open_at_once_are_merged_in_groups(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(output, "MAX_OPEN_RUNS", 3)
    events = _events([(7 * i) % 11 for i in range(40)])  # 40 runs of one event, merged 3 at a time

    assert _sorted(events, 1, tmp_path) == sorted(events, key=lambda e: e.ts_ms)
    assert len(list(tmp_path.iterdir())) <= 3  # merged groups' runs are deleted


def test_the_user_sample_is_fixed_and_samples_nest() -> None:
    users = [f"U{i}" for i in range(500)]

    small, large = sample_users(users, 10), sample_users(reversed(users), 50)
    assert len(small) == 10 and len(large) == 50
    assert small <= large
    assert sample_users(users, 10) == small
    assert sample_users(users[:5], 10) == frozenset(users[:5])
