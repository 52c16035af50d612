"""The plain log format: the one file layout real impression logs are exported to and the simulator writes.

A log is a directory:

    events.csv[.gz]  ts_ms,user_id,item_id,event[,event_id][,request_id][,position]
                     one row per impression or click. The four leading columns come first, in that order;
                     the optional columns follow in any order. Rows must be sorted by ts_ms (ties in any
                     order): `xdm produce` replays the file as an event-time stream, and the window rules
                     (session gaps, 7-day and 3-day windows) assume time only moves forward. Sort an
                     unsorted export with `sort -t, -k1,1n` (keep the header on top) before reading.
                     Without an event_id column each row gets a stable id derived from its content and
                     how often that same content already occurred, so duplicate rows stay distinct
                     events and reading the file twice gives the same ids.
    items.csv[.gz]   item_id,leaf_cat,top_cat,brand,shop   (papers' side-info set F; empty = unknown)
    users.csv[.gz]   user_id,<any categorical columns>     optional (papers' user profile e_u)

All files are UTF-8 CSV as Python's csv module writes it (comma separated, double-quote quoting).
Every problem is raised as LogFormatError naming the file and the line, e.g.
`events.csv:17: ts_ms 'abc' is not an integer`.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from xdm.errors import XdmError
from xdm.records import EVENT_KINDS, Event, Item, UserProfile

EVENT_COLUMNS: tuple[str, ...] = ("ts_ms", "user_id", "item_id", "event")
OPTIONAL_EVENT_COLUMNS: tuple[str, ...] = ("event_id", "request_id", "position")
ITEM_COLUMNS: tuple[str, ...] = ("item_id", "leaf_cat", "top_cat", "brand", "shop")
USER_ID_COLUMN = "user_id"
MAX_TS_MS = 7_258_118_400_000  # 2200-01-01T00:00:00Z: later stamps are unit mistakes (µs or ns exports)


class LogFormatError(XdmError, ValueError):
    """A log file does not follow the plain format; str() is one line `file:line: reason`."""

    def __init__(self, path: str | Path, line: int, reason: str) -> None:
        self.path = str(path)
        self.line = line
        self.reason = reason
        where = f"{Path(self.path).name}:{line}" if line > 0 else Path(self.path).name  # 0: the file as a whole
        super().__init__(f"{where}: {reason}")

    def __reduce__(self):
        # Rebuilt from its own arguments, not from args (the message): a process pool that reads a log in a
        # worker hands the error back pickled, and the default would call __init__ with one argument.
        return type(self), (self.path, self.line, self.reason)


@dataclass(frozen=True)
class LogDir:
    """Where the files of one log live; `.events` etc. resolve the plain or gzipped name."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))  # accept str too

    def _find(self, stem: str, required: bool) -> Path | None:
        plain, packed = self.root / f"{stem}.csv", self.root / f"{stem}.csv.gz"
        if plain.exists() and packed.exists():
            raise LogFormatError(plain, 0, f"both {plain.name} and {packed.name} exist; keep one")
        if plain.exists():
            return plain
        if packed.exists():
            return packed
        if required:
            raise LogFormatError(plain, 0, f"missing: {self.root} has no {plain.name} or {packed.name}")
        return None

    @property
    def events(self) -> Path:
        found = self._find("events", required=True)
        assert found is not None
        return found

    @property
    def items(self) -> Path:
        found = self._find("items", required=True)
        assert found is not None
        return found

    @property
    def users(self) -> Path | None:
        return self._find("users", required=False)

    def target(self, stem: str, compress: bool) -> Path:
        """The path a writer uses for `stem` (events, items, users)."""
        return self.root / (f"{stem}.csv.gz" if compress else f"{stem}.csv")


# ---------------------------------------------------------------------------------------------- reading


def _open_text(path: Path) -> IO[str]:
    # newline="" lets the csv module see quoted newlines itself (csv docs); utf-8-sig drops the byte-order
    # mark spreadsheet exports put in front of the header
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def _rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) for every non-blank row, header included; decoding problems as LogFormatError."""
    if not path.is_file():
        raise LogFormatError(path, 0, f"missing file {path}")
    reader = None
    try:
        with _open_text(path) as handle:
            reader = csv.reader(handle, strict=True)
            for fields in reader:
                if fields:  # a blank line is not a row
                    yield reader.line_num, fields
    # corrupt or truncated gzip streams raise OSError (BadGzipFile), EOFError or zlib.error
    except csv.Error as err:  # the reader has already counted the offending line
        raise LogFormatError(path, max(reader.line_num if reader else 1, 1), f"bad CSV: {err}") from None
    except (UnicodeDecodeError, OSError, EOFError, zlib.error) as err:
        line = reader.line_num + 1 if reader is not None else 1
        raise LogFormatError(path, line, f"unreadable: {err}") from None


def _header(path: Path, rows: Iterator[tuple[int, list[str]]]) -> list[str]:
    for _, fields in rows:
        return [name.strip() for name in fields]
    raise LogFormatError(path, 1, "empty file: expected a header row")


def _event_columns(path: Path, header: list[str]) -> dict[str, int]:
    """Column index of every known event column; checks the fixed leading four and the optional rest."""
    if tuple(header[:4]) != EVENT_COLUMNS:
        raise LogFormatError(path, 1, f"header must start with {','.join(EVENT_COLUMNS)}, got {','.join(header)!r}")
    index = {name: i for i, name in enumerate(EVENT_COLUMNS)}
    for i, name in enumerate(header[4:], start=4):
        if name not in OPTIONAL_EVENT_COLUMNS:
            raise LogFormatError(
                path, 1, f"unknown column {name!r}; optional columns are {', '.join(OPTIONAL_EVENT_COLUMNS)}"
            )
        if name in index:
            raise LogFormatError(path, 1, f"column {name!r} appears twice")
        index[name] = i
    return index


_INTEGER = re.compile(r"-?[0-9]+")  # plain ASCII digits: int() would also take '1_000' or other scripts' digits


def _parse_ts(path: Path, line: int, text: str) -> int:
    if not _INTEGER.fullmatch(text):
        raise LogFormatError(path, line, f"ts_ms {text!r} is not an integer")
    ts = int(text)
    if ts < 0:
        raise LogFormatError(path, line, f"ts_ms {ts} is negative")
    if ts > MAX_TS_MS:
        raise LogFormatError(path, line, f"ts_ms {ts} is after year 2200; is it in micro- or nanoseconds?")
    return ts


def _parse_position(path: Path, line: int, text: str) -> int:
    if text == "":
        return -1
    if not _INTEGER.fullmatch(text):
        raise LogFormatError(path, line, f"position {text!r} is not an integer")
    position = int(text)
    if position < -1:
        raise LogFormatError(path, line, f"position {position} is below -1 (-1 or empty means unknown)")
    return position


def _derived_event_id(fields: list[str], occurrence: int) -> str:
    # Content plus occurrence count: identical rows (a user shown the same item twice in one ms) stay
    # distinct, and a re-read derives the same ids, so downstream dedup by id stays correct.
    digest = hashlib.blake2b("\x1f".join(fields).encode("utf-8"), digest_size=8)
    digest.update(occurrence.to_bytes(4, "little"))
    return digest.hexdigest()


def _events_path(source: str | Path) -> Path:
    path = Path(source)
    return LogDir(path).events if path.is_dir() else path


def read_events(source: str | Path) -> Iterator[Event]:
    """Stream the events of a log directory (or of one events file) in file order, validating each row.

    Memory stays constant: duplicate counting for derived ids only remembers rows of the current
    timestamp, which is enough because the file is sorted by ts_ms.
    """
    path = _events_path(source)
    rows = _rows(path)
    columns = _event_columns(path, _header(path, rows))
    width = len(columns)
    id_col, request_col, position_col = (columns.get(name) for name in OPTIONAL_EVENT_COLUMNS)
    last_ts = -1
    seen_at_ts: dict[tuple[str, ...], int] = {}
    for line, fields in rows:
        if len(fields) != width:
            raise LogFormatError(path, line, f"expected {width} columns, got {len(fields)}")
        ts = _parse_ts(path, line, fields[0])
        if ts < last_ts:
            raise LogFormatError(
                path, line, f"ts_ms {ts} is before the previous row's {last_ts}; sort the file by ts_ms"
            )
        if ts != last_ts:
            seen_at_ts.clear()
            last_ts = ts
        user_id, item_id, kind = fields[1], fields[2], fields[3]
        if not user_id:
            raise LogFormatError(path, line, "empty user_id")
        if not item_id:
            raise LogFormatError(path, line, "empty item_id")
        if kind not in EVENT_KINDS:
            raise LogFormatError(path, line, f"event {kind!r} is not one of {', '.join(EVENT_KINDS)}")
        if id_col is not None:
            event_id = fields[id_col]
            if not event_id:
                raise LogFormatError(path, line, "empty event_id (drop the column to derive ids)")
        else:
            key = tuple(fields)
            occurrence = seen_at_ts.get(key, 0)
            seen_at_ts[key] = occurrence + 1
            event_id = _derived_event_id(fields, occurrence)
        yield Event(
            event_id=event_id,
            ts_ms=ts,
            user_id=user_id,
            item_id=item_id,
            kind=kind,
            request_id=fields[request_col] if request_col is not None else "",
            position=_parse_position(path, line, fields[position_col]) if position_col is not None else -1,
        )


def read_items(source: str | Path) -> dict[str, Item]:
    """The catalogue of a log directory (or of one items file), keyed by item id."""
    path = Path(source)
    path = LogDir(path).items if path.is_dir() else path
    rows = _rows(path)
    header = _header(path, rows)
    if tuple(header) != ITEM_COLUMNS:
        raise LogFormatError(path, 1, f"header must be {','.join(ITEM_COLUMNS)}, got {','.join(header)!r}")
    items: dict[str, Item] = {}
    for line, fields in rows:
        if len(fields) != len(ITEM_COLUMNS):
            raise LogFormatError(path, line, f"expected {len(ITEM_COLUMNS)} columns, got {len(fields)}")
        if not fields[0]:
            raise LogFormatError(path, line, "empty item_id")
        if fields[0] in items:
            raise LogFormatError(path, line, f"item_id {fields[0]!r} appears twice")
        items[fields[0]] = Item(*fields)
    return items


def read_users(source: str | Path) -> dict[str, UserProfile]:
    """User profiles of a log directory (or of one users file); empty when the log has no users file."""
    path = Path(source)
    if path.is_dir():
        found = LogDir(path).users
        if found is None:
            return {}
        path = found
    rows = _rows(path)
    header = _header(path, rows)
    if not header or header[0] != USER_ID_COLUMN:
        raise LogFormatError(path, 1, f"header must start with {USER_ID_COLUMN}, got {','.join(header)!r}")
    names = header[1:]
    if len(set(header)) != len(header) or "" in names:
        raise LogFormatError(path, 1, f"column names must be unique and non-empty, got {','.join(header)!r}")
    order = sorted(range(len(names)), key=names.__getitem__)  # UserProfile.fields are sorted by name
    users: dict[str, UserProfile] = {}
    for line, fields in rows:
        if len(fields) != len(header):
            raise LogFormatError(path, line, f"expected {len(header)} columns, got {len(fields)}")
        user_id, values = fields[0], fields[1:]
        if not user_id:
            raise LogFormatError(path, line, "empty user_id")
        if user_id in users:
            raise LogFormatError(path, line, f"user_id {user_id!r} appears twice")
        users[user_id] = UserProfile(user_id, tuple((names[i], values[i]) for i in order))
    return users


# ---------------------------------------------------------------------------------------------- writing


def _open_for_write(path: Path) -> IO[str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        # mtime=0 and no stored file name: the same rows give the same bytes (seeded runs compare equal)
        raw = open(path, "wb")
        packed = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=1)
        return _ClosingTextWrapper(packed, raw)
    return open(path, "w", encoding="utf-8", newline="")


class _ClosingTextWrapper(io.TextIOWrapper):
    """Text layer over a GzipFile that also closes the underlying file (GzipFile leaves a passed fileobj open)."""

    def __init__(self, packed: gzip.GzipFile, raw: IO[bytes]) -> None:
        super().__init__(packed, encoding="utf-8", newline="")
        self._raw = raw

    def close(self) -> None:
        super().close()
        self._raw.close()


class EventWriter:
    """Writes events.csv[.gz] with every column; `write_columns` takes whole numpy/list batches (simulator)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._handle = _open_for_write(self.path)
        self._handle.write(",".join(EVENT_COLUMNS + OPTIONAL_EVENT_COLUMNS) + "\n")
        self._writer = csv.writer(self._handle, lineterminator="\n")
        self.rows = 0

    def write(self, event: Event) -> None:
        self._writer.writerow(
            (event.ts_ms, event.user_id, event.item_id, event.kind, event.event_id, event.request_id, event.position)
        )
        self.rows += 1

    def write_columns(
        self,
        ts_ms: Iterable[int],
        user_ids: Iterable[str],
        item_ids: Iterable[str],
        kinds: Iterable[str],
        event_ids: Iterable[str],
        request_ids: Iterable[str],
        positions: Iterable[int],
    ) -> None:
        """Write a batch of rows given column-wise; ids must be CSV-safe (no comma, quote or newline)."""
        lines = [
            f"{t},{u},{i},{k},{e},{r},{p}\n"
            for t, u, i, k, e, r, p in zip(ts_ms, user_ids, item_ids, kinds, event_ids, request_ids, positions)
        ]
        self._handle.write("".join(lines))
        self.rows += len(lines)

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_events(path: str | Path, events: Iterable[Event]) -> int:
    """Write events (in the order given, which must be by ts_ms) to a file; returns the row count."""
    with EventWriter(path) as writer:
        for event in events:
            writer.write(event)
        return writer.rows


def write_items(path: str | Path, items: Iterable[Item]) -> int:
    """Write a catalogue to items.csv[.gz]; returns the row count."""
    count = 0
    with _open_for_write(Path(path)) as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(ITEM_COLUMNS)
        for item in items:
            writer.writerow((item.item_id, item.leaf_cat, item.top_cat, item.brand, item.shop))
            count += 1
    return count


def write_users(path: str | Path, users: Iterable[UserProfile]) -> int:
    """Write profiles to users.csv[.gz]; columns are the union of field names (missing values empty)."""
    profiles = list(users)
    names = sorted({name for profile in profiles for name, _ in profile.fields})
    with _open_for_write(Path(path)) as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow((USER_ID_COLUMN, *names))
        for profile in profiles:
            values = profile.as_dict()
            writer.writerow((profile.user_id, *(values.get(name, "") for name in names)))
    return len(profiles)
