"""Reading a dataset's own files row by row, with line numbers, so a bad row is reported as `file:line: reason`.

The datasets ship as plain UTF-8 text (MIND: tab separated without a header; KuaiRand: CSV with one).
Rows are streamed, never loaded whole, and a decoding problem becomes a LogFormatError at its line,
the same error type the plain format raises, so the command line prints it as one line.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from pathlib import Path

from xdm.log_format import LogFormatError


def tsv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of every non-blank line of a tab-separated file without quoting."""
    if not path.is_file():
        raise LogFormatError(path, 0, f"missing file {path}")
    line = 0
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            for line, text in enumerate(handle, start=1):
                text = text.rstrip("\r\n")
                if text:
                    yield line, text.split("\t")
    except UnicodeDecodeError as err:
        raise LogFormatError(path, line + 1, f"unreadable: {err}") from None


def csv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of every non-blank row of a CSV file, header included."""
    if not path.is_file():
        raise LogFormatError(path, 0, f"missing file {path}")
    reader = None
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle, strict=True)
            for fields in reader:
                if fields:
                    yield reader.line_num, fields
    except csv.Error as err:
        raise LogFormatError(path, max(reader.line_num if reader else 1, 1), f"bad CSV: {err}") from None
    except UnicodeDecodeError as err:
        raise LogFormatError(path, (reader.line_num if reader else 0) + 1, f"unreadable: {err}") from None


def csv_columns(path: Path, rows: Iterator[tuple[int, list[str]]], required: Sequence[str]) -> dict[str, int]:
    """Read the header row: the index of every column by name, checking that `required` ones are there."""
    for _, header in rows:
        index = {name.strip(): i for i, name in enumerate(header)}
        missing = [name for name in required if name not in index]
        if missing:
            raise LogFormatError(path, 1, f"missing column(s) {', '.join(missing)}; header is {','.join(header)!r}")
        return index
    raise LogFormatError(path, 1, "empty file: expected a header row")

