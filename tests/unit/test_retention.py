"""The retention rule (which users are idle, in event time) and the state header it reads."""

from __future__ import annotations

import pytest

from stream.retention import idle_users
from stream.state_codec import StateFormatError, UnsupportedStateVersion, encode_state, state_max_ts
from stream.windows import UserState
from xdm.time_units import DAY_MS

RETENTION = 7 * DAY_MS


def test_a_user_idle_past_the_retention_of_the_newest_event_is_idle_and_one_at_it_is_not():
    newest = 100 * DAY_MS
    rows = [("active", newest), ("at-retention", newest - RETENTION), ("past", newest - RETENTION - 1),
            ("long-gone", DAY_MS)]
    assert idle_users(rows, RETENTION) == [("past", newest - RETENTION - 1), ("long-gone", DAY_MS)]


def test_the_clock_is_the_data_not_the_wall_clock():
    """An old log (all events years ago) drops nobody until its own events move on."""
    assert idle_users([("a", 1_000), ("b", 2_000)], RETENTION) == []
    assert idle_users([("a", 1_000), ("b", 1_000 + RETENTION + 1)], RETENTION) == [("a", 1_000)]


def test_no_retention_keeps_everyone_and_no_users_is_no_work():
    assert idle_users([("a", 0), ("b", 10 * RETENTION)], 0) == []
    assert idle_users([], RETENTION) == []


def test_the_newest_event_time_comes_from_the_state_header():
    state = UserState(user_id="u", max_ts=1_700_000_000_123, clicks=[(1_700_000_000_123, "i\x1fc\x1ft\x1fb\x1fs")])
    assert state_max_ts(encode_state(state)) == 1_700_000_000_123
    assert state_max_ts(encode_state(UserState())) == UserState().max_ts


def test_an_unreadable_header_is_a_state_format_error():
    with pytest.raises(StateFormatError):
        state_max_ts(b"")
    with pytest.raises(UnsupportedStateVersion):
        state_max_ts(b"\x07" + bytes(64))
    with pytest.raises(StateFormatError):
        state_max_ts(b"\x01\x00")
