"""The converted log as every importer writes it: a fresh folder, events in time order, a summary.

Public datasets are not in the order the plain format requires (MIND's behaviors.tsv follows no time
order, KuaiRand's logs are grouped by user) and the large ones do not fit in memory (MIND-large: 2.2 M
impression rows, about 80 M events; KuaiRand-27K: 322 M rows). `TimeSorter` is an external merge sort:
it holds at most `buffer_events` events (about 300 bytes each in memory, so the default 500,000 is about
150 MB); a full buffer is sorted and spilled as a run, an events file written and read back by the log
format's own writer and reader, into a scratch folder inside the output folder (removed afterwards;
it needs about the size of the uncompressed events file). The runs are merged lazily, at most
`MAX_OPEN_RUNS` files open at a time. The in-memory sort and the merge are both stable, so events of
the same millisecond keep the order they were added in.
"""

from __future__ import annotations

import heapq
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path

from xdm.log_format import EventWriter, LogDir, LogFormatError, read_events, write_events
from xdm.progress import progress_bar
from xdm.records import Event

DEFAULT_BUFFER_EVENTS = 500_000  # events held in memory before a run is spilled (about 150 MB)
MAX_OPEN_RUNS = 200  # runs merged at once; more are first merged in groups (open files stay bounded)
PROGRESS_EVERY = 65_536  # events between two progress bar updates
LOG_STEMS = ("events", "items", "users")
_TIME = attrgetter("ts_ms")


@dataclass(frozen=True)
class ImportSummary:
    """What an import wrote, for the command's one-line report."""

    events: int
    impressions: int
    clicks: int
    users: int  # distinct users with at least one event
    items: int  # rows of items.csv
    profiles: int  # rows of users.csv
    seconds: float


class TimeSorter:
    """Takes events in any order and gives them back by ts_ms, holding at most `buffer_events` in memory."""

    def __init__(self, scratch: Path, buffer_events: int = DEFAULT_BUFFER_EVENTS) -> None:
        if buffer_events < 1:
            raise ValueError(f"buffer_events must be at least 1, got {buffer_events}")
        self.scratch = Path(scratch)
        self.buffer_events = buffer_events
        self.count = 0  # events added
        self._buffer: list[Event] = []
        self._runs: list[Path] = []
        self._runs_made = 0

    def add(self, event: Event) -> None:
        self._buffer.append(event)
        self.count += 1
        if len(self._buffer) >= self.buffer_events:
            self._buffer.sort(key=_TIME)
            self._runs.append(self._write_run(self._buffer))
            self._buffer = []

    def sorted_events(self) -> Iterator[Event]:
        """Every event added, by ts_ms, ties in the order added; call once, after the last `add`."""
        self._buffer.sort(key=_TIME)
        while len(self._runs) > MAX_OPEN_RUNS:
            # the merged group goes first: it holds the earliest-added events, which keeps ties stable
            group, rest = self._runs[:MAX_OPEN_RUNS], self._runs[MAX_OPEN_RUNS:]
            self._runs = [self._write_run(heapq.merge(*(read_events(run) for run in group), key=_TIME)), *rest]
            for run in group:
                run.unlink()
        return heapq.merge(*(read_events(run) for run in self._runs), self._buffer, key=_TIME)

    def _write_run(self, events: Iterable[Event]) -> Path:
        run = self.scratch / f"run-{self._runs_made:06d}.csv"
        self._runs_made += 1
        write_events(run, events)
        return run


def refuse_existing_log(out: Path) -> None:
    """An import writes a new log: a folder already holding one (plain or gzipped) is refused, not mixed."""
    for stem in LOG_STEMS:
        for name in (f"{stem}.csv", f"{stem}.csv.gz"):
            if (out / name).exists():
                raise LogFormatError(out / name, 0, f"{out} already holds a log; give --out an empty or new folder")


@contextmanager
def time_sorter(out: Path, buffer_events: int = DEFAULT_BUFFER_EVENTS) -> Iterator[TimeSorter]:
    """A sorter whose scratch folder lives in `out` and is removed when the block ends, error or not."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".sort-", dir=out) as scratch:
        yield TimeSorter(Path(scratch), buffer_events)


@dataclass(frozen=True)
class WrittenEvents:
    events: int
    impressions: int
    clicks: int
    users: int


def write_sorted_events(out: Path, sorter: TimeSorter, compress: bool, progress: bool) -> WrittenEvents:
    """Write the sorter's events to out/events.csv[.gz] in time order and count them."""
    users: set[str] = set()
    clicks = 0
    bar = progress_bar(total=sorter.count, desc="writing events", unit="ev", unit_scale=True,
                       show=progress, terminal_only=True)
    with EventWriter(LogDir(out).target("events", compress)) as writer, bar:
        for event in sorter.sorted_events():
            writer.write(event)
            users.add(event.user_id)
            clicks += event.kind == "click"
            if writer.rows % PROGRESS_EVERY == 0:  # a bar update per event would cost more than the write
                bar.update(PROGRESS_EVERY)
        bar.update(writer.rows % PROGRESS_EVERY)
        return WrittenEvents(writer.rows, writer.rows - clicks, clicks, len(users))


def summary(written: WrittenEvents, items: int, profiles: int, started: float) -> ImportSummary:
    return ImportSummary(written.events, written.impressions, written.clicks, written.users, items, profiles,
                         time.monotonic() - started)
