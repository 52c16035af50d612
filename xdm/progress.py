"""The one progress bar every long command shows: tqdm on a terminal, sparse plain lines elsewhere.

On a terminal tqdm redraws one line in place. Written to a file or a pipe (`./dev up > up.txt`, CI, a
process's log) the same redraws become hundreds of carriage-return fragments run together, so there a bar
prints a whole line at most every LINE_EVERY_S, plus its first and last state.
"""

from __future__ import annotations

import sys
from typing import IO, Any, Iterable

from tqdm import tqdm

LINE_EVERY_S = 30.0  # off a terminal: seconds between two progress lines


class _Lines(tqdm):
    """A tqdm whose every display is a line of its own (no carriage return, no cursor movement)."""

    @staticmethod
    def status_printer(file: IO[str]):
        state = {"open": False}  # a line was written and not yet ended

        def print_status(s: str) -> None:
            if not s:  # tqdm clears the bar around tqdm.write(): end the last line instead
                if state["open"]:
                    file.write("\n")
                    file.flush()
                state["open"] = False
                return
            file.write(("\n" if state["open"] else "") + s)
            file.flush()
            state["open"] = True

        return print_status


def progress_bar(iterable: Iterable[Any] | None = None, *, show: bool = True, terminal_only: bool = False,
                 file: IO[str] | None = None, **options: Any) -> tqdm:
    """tqdm(iterable, **options) on `file` (stderr), hidden unless `show`; off a terminal, sparse lines, or
    nothing with `terminal_only` (a command whose piped output should be its result alone)."""
    out = file if file is not None else sys.stderr
    terminal = _is_terminal(out)
    if not show or (terminal_only and not terminal):
        return tqdm(iterable, file=out, disable=True, **options)
    if terminal:
        return tqdm(iterable, file=out, **options)
    # maxinterval too: tqdm's monitor thread would otherwise force a redraw every 10 s. A printed line
    # cannot be cleared, so the last state stays (leave).
    sparse = {"mininterval": LINE_EVERY_S, "maxinterval": LINE_EVERY_S, "position": 0, "leave": True,
              "ascii": True}
    return _Lines(iterable, file=out, **{**options, **sparse})


def _is_terminal(out: IO[str]) -> bool:
    isatty = getattr(out, "isatty", None)
    return bool(isatty and isatty())
