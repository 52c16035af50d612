"""xdm/progress.py: a bar written to a file or a pipe prints a few whole lines, not a redraw per update."""

from __future__ import annotations

import io
import time

from replay.simulate import simulate
from xdm.progress import progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _lines(text: str) -> list[str]:
    return [line for line in text.split("\n") if line]


def test_off_a_terminal_a_bar_prints_its_first_and_last_state_as_whole_lines():
    out = io.StringIO()
    started = time.monotonic()
    for _ in progress_bar(range(40), file=out, desc="steps", mininterval=0.01):
        time.sleep(0.02)  # ~0.8 s: plain tqdm would redraw dozens of times here
    assert time.monotonic() - started < 5
    text = out.getvalue()
    assert "\r" not in text
    lines = _lines(text)
    assert len(lines) == 2, lines
    assert lines[0].startswith("steps:   0%") and lines[-1].startswith("steps: 100%") and "40/40" in lines[-1]


def test_on_a_terminal_the_bar_redraws_in_place_and_hidden_bars_print_nothing():
    screen = Terminal()
    with progress_bar(total=3, file=screen, desc="x", mininterval=0) as bar:
        for _ in range(3):
            bar.update(1)
    assert screen.getvalue().count("\r") >= 3

    for hidden, options in ((io.StringIO(), {"show": False}), (io.StringIO(), {"terminal_only": True})):
        with progress_bar(total=3, file=hidden, **options) as bar:
            bar.update(3)
        assert hidden.getvalue() == "", options
    screen = Terminal()
    with progress_bar(total=3, file=screen, terminal_only=True) as bar:
        bar.update(3)
    assert "3/3" in screen.getvalue()


def test_xdm_simulate_piped_to_a_file_prints_a_few_progress_lines(tmp_path, capsys):
    simulate(100, 300, 30, 11, tmp_path / "log", progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err
    assert len(_lines(err)) <= 3, err
