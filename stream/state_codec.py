"""UserState <-> bytes, for the worker's RocksDB table and its changelog topic.

Every event of a user decodes and re-encodes that user's state, so both directions are built from
bulk C-level operations (str.join/split, map, zip, array); the only per-row Python work is one dict
lookup that interns item keys on encode.

Format 1, little-endian:
    header      version byte, then `_HEADER` (text mode, index width, max_ts, next_prune_ms, counts)
    [lengths]   uint32 character length of each string, only in text mode LENGTHS
    text        the strings, UTF-8: user id, seen event ids, pending anchor ids, then each distinct
                item key; joined by NUL (mode NUL) or back to back (mode LENGTHS, used only when some
                string itself contains a NUL)
    times       int64: click times, impression times, seen-id times, pending anchor times
    indices     uint16 or uint32: the item of each click, then of each impression, into the items

Most rows repeat an item (an unclicked item is impressed at least twice, §4.1), so item keys are
stored once and rows point at them; decoded rows of one item share one string. Side-info strings
inside the keys are not interned further: that doubled encode time to save a few hundred bytes.
"""

from __future__ import annotations

import struct
import sys
from array import array
from itertools import accumulate, chain
from operator import itemgetter

from stream.windows import UserState

FORMAT_VERSION = 1
_HEADER = struct.Struct("<BBqqIIIIII")  # after the version byte
_TEXT_NUL, _TEXT_LENGTHS = 0, 1
_INDEX_CODES = {0: "H", 1: "I"}
_SWAP = sys.byteorder != "little"
_first, _second = itemgetter(0), itemgetter(1)
assert array("H").itemsize == 2 and array("I").itemsize == 4 and array("q").itemsize == 8


class StateFormatError(ValueError):
    """Stored state bytes that cannot be decoded."""


class UnsupportedStateVersion(StateFormatError):
    """State written in a format this code does not know (written by a newer or foreign writer)."""


def encode_state(state: UserState) -> bytes:
    click_times, click_items = _columns(state.clicks)
    impression_times, impression_items = _columns(state.impressions)
    pending_times, pending_ids = _columns(state.pending)
    index: dict[str, int] = {}
    rows = [index.setdefault(item, len(index)) for item in chain(click_items, impression_items)]
    wide = len(index) > 0xFFFF
    texts = [state.user_id, *state.seen, *pending_ids, *index]
    joined = "\x00".join(texts)
    if joined.count("\x00") == len(texts) - 1:
        mode, lengths = _TEXT_NUL, b""
    else:
        mode, joined, lengths = _TEXT_LENGTHS, "".join(texts), _pack(array("I", map(len, texts)))
    text = joined.encode("utf-8", "surrogatepass")
    try:
        times = _pack(array("q", [*click_times, *impression_times, *state.seen.values(), *pending_times]))
        header = _HEADER.pack(mode, int(wide), state.max_ts, state.next_prune_ms, len(index), len(state.clicks),
                              len(state.impressions), len(state.seen), len(state.pending), len(text))
    except (OverflowError, struct.error) as exc:
        raise StateFormatError(f"user {state.user_id!r}: a time does not fit in int64 ms ({exc})") from None
    return b"".join((bytes((FORMAT_VERSION,)), header, lengths, text, times, _pack(array("I" if wide else "H", rows))))


def decode_state(data: bytes) -> UserState:
    if not data:
        raise StateFormatError("empty state bytes; store a missing user as an absent key, not b''")
    if data[0] != FORMAT_VERSION:
        raise UnsupportedStateVersion(
            f"state format {data[0]}, this code reads {FORMAT_VERSION}: run the newer worker, or wipe the "
            "table and rebuild it from the event topics")
    try:
        return _decode_v1(memoryview(data))
    except (IndexError, KeyError, ValueError, struct.error) as exc:
        raise StateFormatError(f"corrupt state ({len(data)} bytes): {exc}") from None


def state_max_ts(data: bytes) -> int:
    """A stored state's newest event time, read from its header alone: the retention sweep reads every
    user's (stream/retention.py), and a full decode costs ~90 µs."""
    if not data:
        raise StateFormatError("empty state bytes")
    if data[0] != FORMAT_VERSION:
        raise UnsupportedStateVersion(f"state format {data[0]}, this code reads {FORMAT_VERSION}")
    try:
        return _HEADER.unpack_from(data, 1)[2]
    except struct.error as exc:
        raise StateFormatError(f"corrupt state header ({len(data)} bytes): {exc}") from None


def _decode_v1(data: memoryview) -> UserState:
    (mode, wide, max_ts, next_prune_ms, n_items, n_clicks, n_impressions, n_seen, n_pending,
     n_text) = _HEADER.unpack_from(data, 1)
    n_texts = 1 + n_seen + n_pending + n_items
    at = 1 + _HEADER.size
    if mode == _TEXT_LENGTHS:
        lengths, at = _unpack("I", data, at, n_texts)
    text = str(data[at:at + n_text], "utf-8", "surrogatepass")
    at += n_text
    if mode == _TEXT_NUL:
        texts = text.split("\x00")
    elif mode == _TEXT_LENGTHS:
        texts = [text[end - size:end] for end, size in zip(accumulate(lengths), lengths)]
    else:
        raise StateFormatError(f"unknown text mode {mode}")
    times, at = _unpack("q", data, at, n_clicks + n_impressions + n_seen + n_pending)
    rows, at = _unpack(_INDEX_CODES[wide], data, at, n_clicks + n_impressions)
    if at != len(data) or len(texts) != n_texts:
        raise StateFormatError(f"expected {at} bytes and {n_texts} strings, found {len(data)} and {len(texts)}")
    items = texts[1 + n_seen + n_pending:]
    row_items = list(map(items.__getitem__, rows))
    k = n_clicks + n_impressions
    return UserState(
        user_id=texts[0],
        max_ts=max_ts,
        next_prune_ms=next_prune_ms,
        clicks=list(zip(times[:n_clicks], row_items[:n_clicks])),
        impressions=list(zip(times[n_clicks:k], row_items[n_clicks:])),
        seen=dict(zip(texts[1:1 + n_seen], times[k:k + n_seen])),
        pending=list(zip(times[k + n_seen:], texts[1 + n_seen:1 + n_seen + n_pending])),
    )


def _columns(rows: list[tuple]) -> tuple[list, list]:
    return list(map(_first, rows)), list(map(_second, rows))


def _pack(values: array) -> bytes:
    if _SWAP:
        values.byteswap()
    return values.tobytes()


def _unpack(code: str, data: memoryview, at: int, count: int) -> tuple[list[int], int]:
    values = array(code)
    end = at + count * values.itemsize
    if end > len(data):
        raise StateFormatError(f"truncated: need {end} bytes, have {len(data)}")
    values.frombytes(data[at:end])
    if _SWAP:
        values.byteswap()
    return values.tolist(), end
