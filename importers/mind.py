"""MIND (the Microsoft News Dataset) converted into the plain log format: `xdm import mind FOLDER... --out DIR`.

A MIND folder (MINDsmall_train, MINDsmall_dev, MINDlarge_train, MINDlarge_dev) holds two tab-separated
files without a header:

    behaviors.tsv  impression id, user id, time ("11/11/2019 9:05:58 AM": US order, 12-hour clock, no
                   zone), history (space-separated news ids the user clicked before the collection
                   window, oldest first), impressions ("N55689-1 N35729-0": the news shown, -1 clicked)
    news.tsv       news id, category, subcategory, title, abstract, url, title entities, abstract
                   entities (the entities as JSON lists with Label, Type, WikidataId, Confidence, ...)

Mapping (docs/log-format.md, "Importing public logs", has the table):
- Each behaviors row is one feed request: every listed news becomes an `impression` at the row's time
  (read as UTC), `request_id` = `<folder name>:<impression id>` (impression ids restart at 1 in every
  folder, so the folder keeps train and dev apart), `position` = its index in the list; every `-1` news
  also becomes a `click` 1 ms later, so a request reads impressions first, then its clicks.
- History (`history="clicks"`, the default): the history of the user's earliest row becomes clicks that
  end one hour before that row, 1 ms apart, oldest first. MIND's windows are short (a user has a few
  requests in six days), so without the history most users start with no long-term clicks at all, and
  the history is what MIND's own baselines model the user by. An hour is longer than the default
  session gap (10 min), so the history forms its own session(s) and the first request's session sees it
  as long-term clicks. The times are made up, only the order is MIND's; `history="skip"` drops it.
- Items: leaf_cat = subcategory, top_cat = category, brand = the WikidataId of the title's most
  confident entity (the headline's subject: a team, person or company, one level below the
  subcategory, as a brand is below a leaf; empty when the title has none), shop empty.
- Several folders are merged and sorted by time; a news id in several news.tsv keeps its first record.
  MIND-large's test folder has no click labels and is refused.

Memory: the time sort's buffer (importers/output.py) plus, when the history is imported or users are
sampled, the earliest row of every user (about 200 bytes a user: about 200 MB for MIND-large's million)
and the news catalogue.
"""

from __future__ import annotations

import calendar
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from importers.output import (
    DEFAULT_BUFFER_EVENTS,
    ImportSummary,
    TimeSorter,
    refuse_existing_log,
    summary,
    time_sorter,
    write_sorted_events,
)
from importers.source_files import tsv_rows
from importers.user_sample import sample_users
from xdm.log_format import LogDir, LogFormatError, write_items
from xdm.progress import progress_bar
from xdm.records import Event, Item
from xdm.time_units import HOUR_MS

HISTORY_CHOICES = ("clicks", "skip")
HISTORY_LEAD_MS = HOUR_MS  # the history's last click is this long before the user's first request
CLICK_AFTER_MS = 1  # a click is stamped this long after its impression
TIME_FORMAT = "%m/%d/%Y %I:%M:%S %p"  # 11/11/2019 9:05:58 AM
BEHAVIOR_COLUMNS = ("impression id", "user id", "time", "history", "impressions")
NEWS_COLUMNS = 8
TITLE_ENTITIES = 6  # column of news.tsv


@dataclass(frozen=True)
class MindFolder:
    """One MIND folder: its behaviors.tsv and news.tsv, and the name that keeps its impression ids apart."""

    root: Path

    @property
    def name(self) -> str:
        return self.root.resolve().name

    @property
    def behaviors(self) -> Path:
        return self.root / "behaviors.tsv"

    @property
    def news(self) -> Path:
        return self.root / "news.tsv"


@dataclass(frozen=True)
class Request:
    """One behaviors.tsv row."""

    folder: int  # index of its folder in the order given
    line: int
    request_id: str
    user_id: str
    ts_ms: int
    history: tuple[str, ...]
    shown: tuple[tuple[str, bool], ...]  # (news id, clicked) in list order

    @property
    def place(self) -> tuple[int, int, int]:
        """Time, then folder and line: ranks a user's rows, ties broken by where they stand."""
        return self.ts_ms, self.folder, self.line


def import_mind(
    sources: Sequence[str | Path],
    out: str | Path,
    *,
    history: str = "clicks",
    max_users: int | None = None,
    compress: bool = False,
    progress: bool = True,
    buffer_events: int = DEFAULT_BUFFER_EVENTS,
) -> ImportSummary:
    """Convert MIND folders into a plain-format log in `out` (see the module docstring for the mapping)."""
    started = time.monotonic()
    if history not in HISTORY_CHOICES:
        raise ValueError(f"history must be one of {', '.join(HISTORY_CHOICES)}, got {history!r}")
    out = Path(out)
    folders = mind_folders(sources)
    refuse_existing_log(out)
    catalogue = read_news(folders)
    earliest = earliest_requests(folders, progress) if history == "clicks" or max_users else {}
    keep = sample_users(earliest, max_users) if max_users else None
    seen: set[str] = set()
    with time_sorter(out, buffer_events) as sorter:
        for request in read_requests(folders, progress):
            if keep is not None and request.user_id not in keep:
                continue
            with_history = history == "clicks" and earliest[request.user_id] == request.place
            _add_request(sorter, request, with_history, seen if keep is not None else None)
        written = write_sorted_events(out, sorter, compress, progress)
    items = catalogue.values() if keep is None else (item for item in catalogue.values() if item.item_id in seen)
    count = write_items(LogDir(out).target("items", compress), items)
    return summary(written, count, 0, started)


def mind_folders(sources: Sequence[str | Path]) -> list[MindFolder]:
    """The folders given, each checked to hold MIND's two files; their names must differ (request ids)."""
    if not sources:
        raise ValueError("give at least one MIND folder (one holding behaviors.tsv and news.tsv)")
    folders = [MindFolder(Path(source)) for source in sources]
    names: set[str] = set()
    for folder in folders:
        for path in (folder.behaviors, folder.news):
            if not path.is_file():
                raise LogFormatError(path, 0, f"missing: {folder.root} has no {path.name}; give MIND's train or "
                                              "dev folder (unzipped)")
        if folder.name in names:
            raise ValueError(f"two MIND folders are named {folder.name!r}: their request ids would collide; "
                             "give each folder once, under distinct names")
        names.add(folder.name)
    return folders


# ------------------------------------------------------------------------------------------------ news


def read_news(folders: Sequence[MindFolder]) -> dict[str, Item]:
    """The news of every folder's news.tsv as items; a news id met again keeps its first record."""
    catalogue: dict[str, Item] = {}
    for folder in folders:
        for line, fields in tsv_rows(folder.news):
            if len(fields) != NEWS_COLUMNS:
                raise LogFormatError(folder.news, line, f"expected {NEWS_COLUMNS} tab-separated columns (news id, "
                                                        f"category, subcategory, title, abstract, url, title "
                                                        f"entities, abstract entities), got {len(fields)}")
            news_id, category, subcategory = fields[0], fields[1], fields[2]
            if not news_id:
                raise LogFormatError(folder.news, line, "empty news id")
            if news_id not in catalogue:
                brand = _headline_subject(folder.news, line, fields[TITLE_ENTITIES])
                catalogue[news_id] = Item(news_id, leaf_cat=subcategory, top_cat=category, brand=brand)
    return catalogue


def _headline_subject(path: Path, line: int, text: str) -> str:
    """WikidataId of the most confident title entity (the first among equals); empty when there is none."""
    if not text.strip():
        return ""
    try:
        entities = json.loads(text)
    except json.JSONDecodeError as err:
        raise LogFormatError(path, line, f"title entities are not JSON: {err}") from None
    if not isinstance(entities, list) or not all(isinstance(entity, dict) for entity in entities):
        raise LogFormatError(path, line, "title entities must be a JSON list of objects")
    named = [entity for entity in entities if entity.get("WikidataId")]
    if not named:
        return ""
    best = max(named, key=lambda entity: _confidence(path, line, entity))  # max keeps the first of equals
    return str(best["WikidataId"])


def _confidence(path: Path, line: int, entity: dict) -> float:
    value = entity.get("Confidence", 0.0)
    if not isinstance(value, int | float):
        raise LogFormatError(path, line, f"title entity confidence {value!r} is not a number")
    return float(value)


# -------------------------------------------------------------------------------------------- behaviors


def read_requests(folders: Sequence[MindFolder], progress: bool) -> Iterator[Request]:
    """Every behaviors.tsv row of every folder, in file order, validated."""
    for index, folder in enumerate(folders):
        rows = tsv_rows(folder.behaviors)
        bar = progress_bar(rows, desc=f"reading {folder.name}/behaviors.tsv", unit="row", unit_scale=True,
                           show=progress, terminal_only=True)
        for line, fields in bar:
            yield parse_request(folder, index, line, fields)


def parse_request(folder: MindFolder, index: int, line: int, fields: list[str]) -> Request:
    path = folder.behaviors
    if len(fields) != len(BEHAVIOR_COLUMNS):
        raise LogFormatError(path, line, f"expected {len(BEHAVIOR_COLUMNS)} tab-separated columns "
                                         f"({', '.join(BEHAVIOR_COLUMNS)}), got {len(fields)}")
    impression_id, user_id, when, history, shown = fields
    if not impression_id:
        raise LogFormatError(path, line, "empty impression id")
    if not user_id:
        raise LogFormatError(path, line, "empty user id")
    entries = shown.split()
    if not entries:
        raise LogFormatError(path, line, "no impressions")
    return Request(index, line, f"{folder.name}:{impression_id}", user_id, _parse_time(path, line, when),
                   tuple(history.split()), tuple(_parse_shown(path, line, entry) for entry in entries))


def _parse_time(path: Path, line: int, text: str) -> int:
    try:
        moment = datetime.strptime(text.strip(), TIME_FORMAT)
    except ValueError:
        raise LogFormatError(path, line, f"time {text!r} is not like '11/11/2019 9:05:58 AM'") from None
    return calendar.timegm(moment.timetuple()) * 1000  # MIND gives no zone: read as UTC


def _parse_shown(path: Path, line: int, entry: str) -> tuple[str, bool]:
    news_id, dash, label = entry.rpartition("-")
    if not dash or not news_id:
        raise LogFormatError(path, line, f"impression {entry!r} has no click label (-1 clicked, -0 not); MIND's "
                                         "test behaviors carry none: import the train and dev folders")
    if label not in ("0", "1"):
        raise LogFormatError(path, line, f"impression {entry!r}: the click label must be 1 or 0")
    return news_id, label == "1"


def earliest_requests(folders: Sequence[MindFolder], progress: bool) -> dict[str, tuple[int, int, int]]:
    """Where each user's earliest row stands (time, folder, line): the row whose history is imported."""
    earliest: dict[str, tuple[int, int, int]] = {}
    for request in read_requests(folders, progress):
        known = earliest.get(request.user_id)
        if known is None or request.place < known:
            earliest[request.user_id] = request.place
    return earliest


def _add_request(sorter: TimeSorter, request: Request, with_history: bool, seen: set[str] | None) -> None:
    user = request.user_id
    if with_history:
        first = request.ts_ms - HISTORY_LEAD_MS - (len(request.history) - 1)
        for offset, news_id in enumerate(request.history):
            sorter.add(Event(f"history:{user}:{offset}", first + offset, user, news_id, "click"))
    for position, (news_id, _) in enumerate(request.shown):
        sorter.add(Event(f"{request.request_id}:{position}", request.ts_ms, user, news_id, "impression",
                         request.request_id, position))
    for position, (news_id, clicked) in enumerate(request.shown):
        if clicked:
            sorter.add(Event(f"{request.request_id}:{position}:click", request.ts_ms + CLICK_AFTER_MS, user,
                             news_id, "click", request.request_id, position))
    if seen is not None:
        seen.update(request.history if with_history else ())
        seen.update(news_id for news_id, _ in request.shown)
