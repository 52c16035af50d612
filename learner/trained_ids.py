"""A record of which samples the learner's model was trained on, in step with its checkpoints.

Off by default (`learner.record_trained_ids`): it is there so a fault-injection run (bench/chaos.py)
can check that every sample the stream emitted was trained on exactly once across kills and restarts,
which the learner's own dedup (learner/dedup.py) cannot show, since it is the thing being checked.

One sample id a line, appended after each step on new samples (rehearsal steps, which train on
remembered samples again on purpose, are not recorded). A checkpoint stores the record's length; a
restart cuts the record back to it, because the restored model has not seen what came after, and the
learner trains on those samples again. So the record always lists the history of the model that runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

FILE = "trained-ids.txt"


def trained_ids_path(checkpoint_dir: str, arm: str) -> Path:
    return Path(checkpoint_dir) / arm / FILE


class TrainedIds:
    """The append-only record of one arm's learner."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(path, "ab")

    def append(self, sample_ids: Iterable[str]) -> None:
        """Record one step's samples; flushed at once, so a reader sees training progress as it happens."""
        self._handle.write("".join(f"{sid}\n" for sid in sample_ids).encode())
        self._handle.flush()

    def mark(self) -> int:
        """Make what was appended durable and return the record's length, for the checkpoint to keep."""
        self._handle.flush()
        os.fsync(self._handle.fileno())  # before the checkpoint that names this length is written
        return self._handle.tell()

    def cut_to(self, length: int) -> None:
        """Forget what the restored checkpoint does not cover (also a line cut short by a kill)."""
        self._handle.flush()
        self._handle.truncate(min(length, os.path.getsize(self.path)))
        self._handle.seek(0, os.SEEK_END)

    def close(self) -> None:
        self._handle.close()


def read_trained_ids(path: Path) -> list[str]:
    """The record in order, one entry per training; a repeated id is a sample trained twice."""
    if not path.exists():
        return []
    return [line for line in path.read_text().splitlines() if line]
