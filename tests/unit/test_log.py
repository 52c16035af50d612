"""xdm/log.py: a watched command (`xdm up`) keeps library chatter off its console and in its log file."""

from __future__ import annotations

import logging

import pytest

from xdm.log import LIBRARIES, send_library_logs_to, setup_logging


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    saved = root.handlers[:], root.level, {name: logging.getLogger(name).level for name in LIBRARIES}
    yield
    for handler in root.handlers:
        if handler not in saved[0]:
            handler.close()
    root.handlers[:], level, libraries = saved
    root.setLevel(level)
    for name, library_level in libraries.items():
        logging.getLogger(name).setLevel(library_level)


def test_library_warnings_go_to_the_file_only_and_project_lines_and_library_errors_stay(tmp_path, capsys,
                                                                                       restore_logging):
    setup_logging("INFO")
    path = tmp_path / "up.log"
    send_library_logs_to(path)
    logging.getLogger("kafka.net.selector").warning("Task %r ran for %.3fs", "poll", 0.2)
    logging.getLogger("aiokafka.consumer").warning("heartbeat failed")
    logging.getLogger("replay.bring_up").info("replayed 100 events")
    logging.getLogger("kafka.conn").error("connection refused")

    console = capsys.readouterr().err
    assert "ran for" not in console and "heartbeat" not in console
    assert "replayed 100 events" in console and "connection refused" in console
    written = path.read_text()
    for line in ("ran for 0.200s", "heartbeat failed", "replayed 100 events", "connection refused"):
        assert line in written


def test_without_a_log_file_the_console_shows_library_warnings_as_before(capsys, restore_logging):
    setup_logging("INFO")
    logging.getLogger("kafka.net.selector").warning("Task ran for 0.2s")
    logging.getLogger("kafka.net.selector").info("below the libraries' level")
    console = capsys.readouterr().err
    assert "Task ran for 0.2s" in console and "below the libraries' level" not in console
