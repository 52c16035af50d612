"""The plain log format: round trips, derived ids, and one readable error per kind of bad input."""

from __future__ import annotations

import gzip
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xdm.log_format import (
    EventWriter,
    LogDir,
    LogFormatError,
    read_events,
    read_items,
    read_users,
    write_events,
    write_items,
    write_users,
)
from xdm.records import Event, Item, UserProfile

HEADER = "ts_ms,user_id,item_id,event\n"
EVENTS = [
    Event("e1", 1_577_376_000_000, "u1", "i1", "impression", "r1", 0),
    Event("e2", 1_577_376_000_000, "u1", "i2", "impression", "r1", 1),
    Event("e3", 1_577_376_001_500, "u1", "i1", "click", "r1", 0),
    Event("e4", 1_577_376_009_000, "u,2", 'i"3', "impression", "", -1),  # ids that need CSV quoting
]
ITEMS = [Item("i1", "leaf1", "top1", "b1", "s1"), Item("i2", "leaf2", "top1", "", ""), Item('i"3', "leaf1")]
USERS = [
    UserProfile("u1", (("age_bucket", "25-34"), ("gender", "f"))),
    UserProfile("u,2", (("age_bucket", ""), ("gender", "m"))),  # an empty value is an unknown one
]


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("compress", [False, True])
def test_round_trip(tmp_path: Path, compress: bool) -> None:
    log = LogDir(tmp_path)
    write_events(log.target("events", compress), EVENTS)
    write_items(log.target("items", compress), ITEMS)
    write_users(log.target("users", compress), USERS)
    assert list(read_events(tmp_path)) == EVENTS
    assert read_items(tmp_path) == {item.item_id: item for item in ITEMS}
    assert read_users(tmp_path) == {user.user_id: user for user in USERS}


def test_column_writer_matches_event_writer(tmp_path: Path) -> None:
    with EventWriter(tmp_path / "events.csv") as writer:
        writer.write_columns(
            [5, 6], ["u1", "u1"], ["i1", "i1"], ["impression", "click"], ["a", "b"], ["r", "r"], [3, 3]
        )
    read = [(e.event_id, e.kind, e.position) for e in read_events(tmp_path)]
    assert read == [("a", "impression", 3), ("b", "click", 3)]


def test_gzip_bytes_do_not_depend_on_write_time(tmp_path: Path) -> None:
    # seeded simulations compare files byte for byte, so gzip must not stamp the time or file name
    write_events(tmp_path / "a.csv.gz", EVENTS)
    write_events(tmp_path / "b.csv.gz", EVENTS)
    assert (tmp_path / "a.csv.gz").read_bytes() == (tmp_path / "b.csv.gz").read_bytes()


def test_derived_ids_keep_duplicates_distinct_and_stable(tmp_path: Path) -> None:
    rows = "5,u,i,impression\n5,u,i,impression\n5,u,j,impression\n6,u,i,impression\n"
    path = _write(tmp_path, "events.csv", HEADER + rows)
    first = [e.event_id for e in read_events(path)]
    assert len(set(first)) == 4
    assert [e.event_id for e in read_events(path)] == first


def test_optional_columns_in_any_order_and_blank_lines(tmp_path: Path) -> None:
    path = _write(tmp_path, "events.csv", "ts_ms,user_id,item_id,event,position,event_id\n\n7,u,i,click,,x\n")
    (event,) = read_events(path)
    assert (event.event_id, event.position, event.request_id) == ("x", -1, "")


def test_byte_order_mark_from_spreadsheets_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_bytes(b"\xef\xbb\xbf" + (HEADER + "1,u,i,click\n").encode())
    assert len(list(read_events(path))) == 1


def test_users_file_is_optional(tmp_path: Path) -> None:
    assert read_users(tmp_path) == {}


BAD_EVENTS = [
    ("ts_ms,user_id,item,event\n", 1, "header must start with ts_ms,user_id,item_id,event"),
    (HEADER.strip() + ",score\n", 1, "unknown column 'score'"),
    (HEADER.strip() + ",event_id,event_id\n", 1, "appears twice"),
    ("", 1, "empty file"),
    (HEADER + "1,u,i,click\nabc,u,i,click\n", 3, "ts_ms 'abc' is not an integer"),
    (HEADER + "-5,u,i,click\n", 2, "ts_ms -5 is negative"),
    (HEADER + "1_000,u,i,click\n", 2, "ts_ms '1_000' is not an integer"),
    (HEADER + "1.5e12,u,i,click\n", 2, "ts_ms '1.5e12' is not an integer"),
    (HEADER + "1577376000000000,u,i,click\n", 2, "after year 2200"),
    (HEADER + "1,u,i,like\n", 2, "event 'like' is not one of impression, click"),
    (HEADER + "1,,i,click\n", 2, "empty user_id"),
    (HEADER + "1,u,,click\n", 2, "empty item_id"),
    (HEADER + "1,u,i\n", 2, "expected 4 columns, got 3"),
    (HEADER + "9,u,i,click\n8,u,i,click\n", 3, "before the previous row's 9; sort the file by ts_ms"),
    ("ts_ms,user_id,item_id,event,event_id\n1,u,i,click,\n", 2, "empty event_id"),
    ("ts_ms,user_id,item_id,event,position\n1,u,i,click,first\n", 2, "position 'first' is not an integer"),
    ("ts_ms,user_id,item_id,event,position\n1,u,i,click,-2\n", 2, "position -2 is below -1"),
    (HEADER + '1,u,"i,click\n', 2, "bad CSV"),
]


@pytest.mark.parametrize(("text", "line", "reason"), BAD_EVENTS)
def test_bad_events_name_file_and_line(tmp_path: Path, text: str, line: int, reason: str) -> None:
    path = _write(tmp_path, "events.csv", text)
    with pytest.raises(LogFormatError) as caught:
        list(read_events(tmp_path))
    assert str(caught.value).startswith(f"events.csv:{line}: ")
    assert reason in str(caught.value)
    assert (caught.value.path, caught.value.line) == (str(path), line)


def test_first_error_message_reads_as_one_line(tmp_path: Path) -> None:
    _write(tmp_path, "events.csv", HEADER + "\n".join(f"{i},u,i,click" for i in range(15)) + "\nabc,u,i,click\n")
    with pytest.raises(LogFormatError, match=r"^events\.csv:17: ts_ms 'abc' is not an integer$"):
        list(read_events(tmp_path))


def test_an_error_raised_in_a_worker_process_comes_back_whole(tmp_path: Path) -> None:
    """Offline runs and benches read logs inside process pools, which hand errors back pickled."""
    with ProcessPoolExecutor(1) as pool:
        with pytest.raises(LogFormatError, match=r"^events\.csv: missing: .* has no events\.csv or events\.csv\.gz$"):
            pool.submit(_read_all_events, tmp_path).result(timeout=60)


def _read_all_events(root: Path) -> list:
    return list(read_events(root))


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("item_id,leaf_cat,top_cat,brand\n", 1, "header must be item_id,leaf_cat,top_cat,brand,shop"),
        ("item_id,leaf_cat,top_cat,brand,shop\ni,a,b,c\n", 2, "expected 5 columns, got 4"),
        ("item_id,leaf_cat,top_cat,brand,shop\ni,a,b,c,d\ni,a,b,c,d\n", 3, "item_id 'i' appears twice"),
        ("item_id,leaf_cat,top_cat,brand,shop\n,a,b,c,d\n", 2, "empty item_id"),
    ],
)
def test_bad_items_name_file_and_line(tmp_path: Path, text: str, line: int, reason: str) -> None:
    _write(tmp_path, "items.csv", text)
    with pytest.raises(LogFormatError, match=rf"^items\.csv:{line}: .*{reason}"):
        read_items(tmp_path)


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("id,gender\n", 1, "header must start with user_id"),
        ("user_id,gender,gender\n", 1, "unique"),
        ("user_id,gender\nu,f,x\n", 2, "expected 2 columns, got 3"),
        ("user_id,gender\nu,f\nu,m\n", 3, "user_id 'u' appears twice"),
    ],
)
def test_bad_users_name_file_and_line(tmp_path: Path, text: str, line: int, reason: str) -> None:
    _write(tmp_path, "users.csv", text)
    with pytest.raises(LogFormatError, match=rf"^users\.csv:{line}: .*{reason}"):
        read_users(tmp_path)


def test_missing_and_ambiguous_files(tmp_path: Path) -> None:
    with pytest.raises(LogFormatError, match=r"^events\.csv: missing: .* has no events.csv or events.csv.gz"):
        list(read_events(tmp_path))
    with pytest.raises(LogFormatError, match=r"^items\.csv: missing"):
        read_items(tmp_path / "items.csv")
    _write(tmp_path, "events.csv", HEADER)
    (tmp_path / "events.csv.gz").write_bytes(gzip.compress(HEADER.encode()))
    with pytest.raises(LogFormatError, match="keep one"):
        list(read_events(tmp_path))


def test_corrupt_gzip_is_a_format_error(tmp_path: Path) -> None:
    (tmp_path / "events.csv.gz").write_bytes(gzip.compress((HEADER + "1,u,i,click\n" * 50).encode())[:40])
    with pytest.raises(LogFormatError, match=r"^events\.csv\.gz:\d+: unreadable"):
        list(read_events(tmp_path))


# Fuzz: whatever rows a user's export holds, the reader either yields events or raises LogFormatError.
_FIELD = st.one_of(
    st.sampled_from(["", "1", "-1", "1577376000000", "99999999999999999999", "click", "impression", "u", "x y"]),
    st.text(alphabet=st.sampled_from(list('ab,"\n\r \t\x00é1-')), max_size=8),
    st.text(max_size=6),
)
_ROW = st.lists(_FIELD, min_size=0, max_size=8).map(lambda fields: ",".join(fields))
_HEADERS = st.sampled_from(
    [HEADER.strip(), HEADER.strip() + ",event_id", HEADER.strip() + ",position,request_id", "junk"]
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(header=_HEADERS, rows=st.lists(_ROW, max_size=6), packed=st.booleans())
def test_fuzzed_rows_raise_only_log_format_errors(header: str, rows: list[str], packed: bool) -> None:
    text = "\n".join([header, *rows]) + "\n"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("events.csv.gz" if packed else "events.csv")
        data = text.encode("utf-8", "surrogatepass")
        path.write_bytes(gzip.compress(data) if packed else data)
        try:
            for event in read_events(path):
                assert event.kind in ("impression", "click") and event.user_id and event.item_id
        except LogFormatError as err:
            assert str(err).startswith(path.name + ":")


@settings(max_examples=40, deadline=None)
@given(blob=st.binary(max_size=200), name=st.sampled_from(["events.csv", "events.csv.gz", "items.csv", "users.csv"]))
def test_fuzzed_bytes_raise_only_log_format_errors(blob: bytes, name: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(blob)
        readers = {"events": lambda p: list(read_events(p)), "items": read_items, "users": read_users}
        reader = readers[name.split(".")[0]]
        try:
            reader(path)
        except LogFormatError:
            pass
