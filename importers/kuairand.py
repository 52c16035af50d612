"""KuaiRand (Kuaishou's exposure logs) converted into the plain log format: `xdm import kuairand DIR --out DIR`.

KuaiRand comes in three versions (Pure, 1K, 27K) with the same files in their `data/` folder, CSV with a
header (the version's suffix: _pure, _1k, _27k, and _part1/_part2 for 27K's largest files):

    log_standard_4_08_to_4_21_*.csv, log_standard_4_22_to_5_08_*.csv   the normal feed
    log_random_4_22_to_5_08_*.csv                                         videos shown at random in that feed
        user_id, video_id, date, hourmin, time_ms, is_click, is_like, ..., is_rand, tab
    video_features_basic_*.csv   video_id, author_id, video_type, upload_dt, upload_type, visible_status,
                                 video_duration, server_width, server_height, music_id, music_type, tag ("12,65")
    user_features_*.csv          user_id, user_active_degree, is_lowactive_period, ..., follow_user_num,
                                 follow_user_num_range, ..., onehot_feat0 ... onehot_feat17

Mapping (docs/log-format.md, "Importing public logs", has the table):
- Every log row is one exposure: an `impression` at time_ms and, when is_click = 1, a `click` 1 ms later
  (in the single-column UI is_click means a valid play, see KuaiRand's README). KuaiRand has no request
  ids or slots: request_id stays empty and position unknown. event_id = `<file>:<line>`, the file written
  short: s0408 = log_standard_4_08_..., r0422 = log_random_4_22_..., p1 = _part1 (a click adds `:click`).
- Logs (`logs`): "both" (the default) is what users were shown, the standard feed with the random
  insertions merged by time; "standard" or "random" take one.
- Items: leaf_cat = the first tag, top_cat = upload_type (how the video was made, e.g. ShortImport: a
  dozen values; video_type only says NORMAL or AD), brand = author_id (the creator, many videos each),
  shop = music_id (the soundtrack, shared by videos that follow one trend).
- Users: the categorical columns of user_features; a count with a `_range` twin (follow_user_num,
  fans_user_num, friend_user_num, register_days) is left to its range, which is its categorical form.
- `max_users`: the sample is drawn from user_features (importers/user_sample.py); items and users then
  hold only what the sampled users saw and are.

Memory: the time sort's buffer (importers/output.py) plus, with a sample, the ids of the videos shown.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
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
from importers.source_files import csv_columns, csv_rows
from importers.user_sample import sample_users
from xdm.log_format import MAX_TS_MS, LogDir, LogFormatError, write_items, write_users
from xdm.progress import progress_bar
from xdm.records import Event, Item, UserProfile

LOG_CHOICES = ("both", "standard", "random")
LOG_PATTERNS = {"standard": "log_standard_*.csv", "random": "log_random_*.csv"}
VIDEO_PATTERN = "video_features_basic*.csv"
USER_PATTERN = "user_features*.csv"
LOG_COLUMNS = ("user_id", "video_id", "time_ms", "is_click")
VIDEO_COLUMNS = ("video_id", "author_id", "upload_type", "music_id", "tag")
USER_ID = "user_id"
RANGE_SUFFIX = "_range"
CLICK_AFTER_MS = 1  # a click is stamped this long after its impression
_VERSION = re.compile(r"_(pure|1k|27k)(?:_part\d+)?$", re.IGNORECASE)
_LOG_NAME = re.compile(r"log_(standard|random)_(\d+)_(\d+)_to_.*?(?:_part(\d+))?$")
_WHOLE_NUMBER = re.compile(r"[0-9]+(?:\.0*)?")  # "1650485801301" or, re-exported by pandas, "1650485801301.0"


def import_kuairand(
    source: str | Path,
    out: str | Path,
    *,
    logs: str = "both",
    max_users: int | None = None,
    compress: bool = False,
    progress: bool = True,
    buffer_events: int = DEFAULT_BUFFER_EVENTS,
) -> ImportSummary:
    """Convert a KuaiRand data folder into a plain-format log in `out` (see the module docstring)."""
    started = time.monotonic()
    if logs not in LOG_CHOICES:
        raise ValueError(f"logs must be one of {', '.join(LOG_CHOICES)}, got {logs!r}")
    out = Path(out)
    folder = data_folder(Path(source))
    log_files = [path for kind in LOG_PATTERNS if logs in ("both", kind) for path in _find(folder, LOG_PATTERNS[kind])]
    videos, user_file = _find_one(folder, VIDEO_PATTERN), _find_one(folder, USER_PATTERN)
    _check_one_version([*log_files, videos, user_file])
    refuse_existing_log(out)
    profiles = list(read_user_profiles(user_file))
    keep = sample_users((profile.user_id for profile in profiles), max_users) if max_users else None
    if keep is not None:
        profiles = [profile for profile in profiles if profile.user_id in keep]
    seen: set[str] | None = set() if keep is not None else None
    with time_sorter(out, buffer_events) as sorter:
        for path in log_files:
            _add_log(sorter, path, keep, seen, progress)
        written = write_sorted_events(out, sorter, compress, progress)
    items = read_videos(videos, seen)
    count = write_items(LogDir(out).target("items", compress), items)
    users = write_users(LogDir(out).target("users", compress), profiles)
    return summary(written, count, users, started)


def data_folder(source: Path) -> Path:
    """KuaiRand's `data` folder: the one given, or its `data` subfolder (the unpacked archive's top)."""
    if not source.is_dir():
        raise LogFormatError(source, 0, f"{source} is not a folder; give KuaiRand's data folder")
    if not any(source.glob("log_*.csv")) and (source / "data").is_dir():
        return source / "data"
    return source


def _find(folder: Path, pattern: str) -> list[Path]:
    found = sorted(folder.glob(pattern))
    if not found:
        raise LogFormatError(folder / pattern, 0, f"missing: {folder} has no {pattern}; give KuaiRand's data "
                                                  "folder (Pure, 1K or 27K, unpacked)")
    return found


def _find_one(folder: Path, pattern: str) -> Path:
    found = _find(folder, pattern)
    if len(found) > 1:
        raise LogFormatError(found[1], 0, f"{folder} holds several {pattern}: keep one KuaiRand version a folder")
    return found[0]


def _check_one_version(paths: list[Path]) -> None:
    """Pure, 1K and 27K share user and video ids: files of two versions together would double count."""
    versions = {match.group(1).lower() for path in paths if (match := _VERSION.search(path.stem))}
    if len(versions) > 1:
        raise LogFormatError(paths[0].parent, 0, f"files of several KuaiRand versions ({', '.join(sorted(versions))})"
                                                 " in one folder: keep one version a folder")


# ------------------------------------------------------------------------------------------------- logs


def _file_tag(path: Path) -> str:
    """Short name of a log file for event ids: s0408p1 = log_standard_4_08_to_..._part1."""
    match = _LOG_NAME.match(path.stem)
    if match is None:
        return path.stem
    kind, month, day, part = match.groups()
    return f"{kind[0]}{int(month):02d}{int(day):02d}" + (f"p{part}" if part else "")


def _whole_number(path: Path, line: int, name: str, text: str) -> int:
    if not _WHOLE_NUMBER.fullmatch(text):
        raise LogFormatError(path, line, f"{name} {text!r} is not a whole number")
    return int(text.split(".")[0])


def read_exposures(path: Path, progress: bool) -> Iterator[tuple[int, str, str, int, bool]]:
    """(line, user_id, video_id, time_ms, clicked) of every row of one log file, validated."""
    rows = csv_rows(path)
    column = csv_columns(path, rows, LOG_COLUMNS)
    user_col, video_col, time_col, click_col = (column[name] for name in LOG_COLUMNS)
    width = max(column.values()) + 1
    bar = progress_bar(rows, desc=f"reading {path.name}", unit="row", unit_scale=True, show=progress,
                       terminal_only=True)
    for line, fields in bar:
        if len(fields) < width:
            raise LogFormatError(path, line, f"expected at least {width} columns, got {len(fields)}")
        user_id, video_id = fields[user_col].strip(), fields[video_col].strip()
        if not user_id or not video_id:
            raise LogFormatError(path, line, "empty user_id or video_id")
        ts = _whole_number(path, line, "time_ms", fields[time_col].strip())
        if ts > MAX_TS_MS:
            raise LogFormatError(path, line, f"time_ms {ts} is after year 2200; is it in micro- or nanoseconds?")
        click = _whole_number(path, line, "is_click", fields[click_col].strip())
        if click not in (0, 1):
            raise LogFormatError(path, line, f"is_click {click} is not 0 or 1")
        yield line, user_id, video_id, ts, click == 1


def _add_log(sorter: TimeSorter, path: Path, keep: frozenset[str] | None, seen: set[str] | None,
             progress: bool) -> None:
    tag = _file_tag(path)
    for line, user_id, video_id, ts, clicked in read_exposures(path, progress):
        if keep is not None and user_id not in keep:
            continue
        sorter.add(Event(f"{tag}:{line}", ts, user_id, video_id, "impression"))
        if clicked:
            sorter.add(Event(f"{tag}:{line}:click", ts + CLICK_AFTER_MS, user_id, video_id, "click"))
        if seen is not None:
            seen.add(video_id)


# ------------------------------------------------------------------------------------------ side info


def read_videos(path: Path, seen: set[str] | None) -> Iterator[Item]:
    """Items from video_features_basic, streamed (27K's file is 2.6 GB); only `seen` ones when given."""
    rows = csv_rows(path)
    column = csv_columns(path, rows, VIDEO_COLUMNS)
    video_col, author_col, upload_col, music_col, tag_col = (column[name] for name in VIDEO_COLUMNS)
    width = max(column.values()) + 1
    for line, fields in rows:
        if len(fields) < width:
            raise LogFormatError(path, line, f"expected at least {width} columns, got {len(fields)}")
        video_id = fields[video_col].strip()
        if not video_id:
            raise LogFormatError(path, line, "empty video_id")
        if seen is not None:
            if video_id not in seen:
                continue
            seen.discard(video_id)  # a video listed twice is written once
        first_tag = fields[tag_col].split(",")[0].strip()
        yield Item(video_id, leaf_cat=first_tag, top_cat=fields[upload_col].strip(),
                   brand=fields[author_col].strip(), shop=fields[music_col].strip())


def read_user_profiles(path: Path) -> Iterator[UserProfile]:
    """Profiles from user_features: every categorical column (a count with a `_range` twin is left out)."""
    rows = csv_rows(path)
    column = csv_columns(path, rows, (USER_ID,))
    # an unnamed column (a saved pandas index) is no feature
    kept = sorted(name for name in column if name not in ("", USER_ID) and f"{name}{RANGE_SUFFIX}" not in column)
    user_col, width = column[USER_ID], max(column.values()) + 1
    users: set[str] = set()
    for line, fields in rows:
        if len(fields) != width:
            raise LogFormatError(path, line, f"expected {width} columns, got {len(fields)}")
        user_id = fields[user_col].strip()
        if not user_id:
            raise LogFormatError(path, line, "empty user_id")
        if user_id in users:
            raise LogFormatError(path, line, f"user_id {user_id!r} appears twice")
        users.add(user_id)
        yield UserProfile(user_id, tuple((name, fields[column[name]].strip()) for name in kept))
