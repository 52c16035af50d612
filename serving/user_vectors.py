"""The fused user vector z of one user from their current windows, with a version's user tower."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from learner.batch import collate
from learner.model_store import Tower
from stream.windows import Windows


@dataclass(frozen=True)
class _Query:
    """Duck-types a training sample for collate: windows and profile, no labels."""

    windows: Windows
    profile: tuple[tuple[str, str], ...] = ()
    labels: tuple = ()


def user_vectors(tower: Tower, windows: list[Windows]) -> np.ndarray:
    """z for each windows (eqs. 6-8 per the tower's variant), float32 [B, D]; no autograd."""
    batch = collate([_Query(w) for w in windows], tower.vocab, grow=False)
    with torch.inference_mode():
        encode = tower.encode or tower.model.user_vector
        return encode(batch).float().numpy()


def clicked_items(windows: Windows) -> set[str]:
    return {b.item.item_id for b in (*windows.short, *windows.long)}
