"""Logging set-up shared by every process: one line per record, structured `key=value` extras."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

_RESERVED = set(vars(logging.makeLogRecord({}))) | {"asctime", "message"}
CONSOLE = "console"  # the name of the stderr handler setup_logging installs
# Third-party loggers: warnings and up only, and off a watched console (send_library_logs_to).
LIBRARIES = ("aiokafka", "kafka", "faust", "mode", "pymilvus", "grpc")


class KeyValueFormatter(logging.Formatter):
    """Appends the record's extra fields as key=value so logs stay grep-able and machine-readable."""

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        extras = {k: v for k, v in vars(record).items() if k not in _RESERVED and not k.startswith("_")}
        if not extras:
            return base
        return base + " " + " ".join(f"{k}={v}" for k, v in sorted(extras.items()))


def setup_logging(level: str = "INFO", name: str = "xdm") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(CONSOLE)
    handler.setFormatter(_formatter(name))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for library in LIBRARIES:
        logging.getLogger(library).setLevel(max(logging.WARNING, root.level))


def send_library_logs_to(path: Path, name: str = "xdm") -> None:
    """Write every record to `path` as well, and keep the libraries' below ERROR off the console.

    For a command a person watches (`xdm up`): its console shows progress and the answer, while warnings
    such as kafka-python's "Task ... ran for 0.2 s" go to the log file beside the services' logs. A
    service's stderr is its log file already, so services keep everything there.
    """
    root = logging.getLogger()
    for handler in root.handlers:
        if handler.get_name() == CONSOLE:
            handler.addFilter(_not_library_chatter)
    to_file = logging.FileHandler(path, encoding="utf-8")
    to_file.setFormatter(_formatter(name))
    root.addHandler(to_file)


def _is_library(logger_name: str) -> bool:
    return logger_name.split(".", 1)[0] in LIBRARIES


def _not_library_chatter(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR or not _is_library(record.name)


def _formatter(name: str) -> KeyValueFormatter:
    return KeyValueFormatter(f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s")
