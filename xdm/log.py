"""Logging set-up shared by every process: one line per record, structured `key=value` extras."""

from __future__ import annotations

import logging
import sys

_RESERVED = set(vars(logging.makeLogRecord({}))) | {"asctime", "message"}


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
    handler.setFormatter(KeyValueFormatter(f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiokafka", "kafka", "faust", "mode", "pymilvus", "grpc"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
