"""Atomic learner checkpoints: model, optimiser, vocabulary, sampler, RNG and the consumed offsets.

Offsets live inside the checkpoint so the model state and the position in the sample stream can never
disagree: after a crash the learner restarts exactly after the last sample that the checkpoint covers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

FILE = "checkpoint.pt"


def checkpoint_path(directory: str, arm: str) -> Path:
    return Path(directory) / arm / FILE


def save_checkpoint(directory: str, arm: str, state: dict[str, Any]) -> Path:
    """Write to a temporary file, fsync, rename: a reader sees the old or the new checkpoint, never half."""
    path = checkpoint_path(directory, arm)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def load_checkpoint(directory: str, arm: str) -> dict[str, Any] | None:
    path = checkpoint_path(directory, arm)
    if not path.exists():
        return None
    # weights-only: a checkpoint holds tensors and plain data only, so a file put in its place runs no code
    return torch.load(path, map_location="cpu", weights_only=True)
