"""The fused user vector z of users from their current windows, with a version's user tower.

The windows arrive as the reader caches them, stored rows (stream.windows.WindowRows): item keys map
to vocabulary rows through the tower's own memo, so a request builds no per-item Python objects, and the
server keeps no Item records (which the garbage collector would walk in every full collection).
"""

from __future__ import annotations

import numpy as np
import torch

from learner.batch import ITEM_KINDS, LOOKUP_CACHE_MAX, unlabelled_batch
from learner.model_store import Tower
from stream.windows import FIELD_SEP, Row, WindowRows, item_ids_of


def user_vectors(tower: Tower, windows: list[WindowRows]) -> np.ndarray:
    """z for each user's windows (eqs. 6-8 per the tower's variant), float32 [B, D]; no autograd."""
    short, long, unclicked = ([_rows(tower, w[i]) for w in windows] for i in range(3))
    batch = unlabelled_batch(short, long, unclicked, tower.vocab)
    with torch.inference_mode():
        encode = tower.encode or tower.model.user_vector
        return encode(batch).float().numpy()


def clicked_items(windows: WindowRows) -> set[str]:
    short, long, _ = windows
    return set(item_ids_of([key for _, key in (*short, *long)]))


def has_clicks(windows: WindowRows | None) -> bool:
    return windows is not None and bool(windows[0] or windows[1])


def _rows(tower: Tower, window: tuple[Row, ...]) -> list[tuple[int, ...]]:
    memo, lookup, out = tower.key_rows, tower.vocab.lookup, []
    for _, key in window:
        ids = memo.get(key)
        if ids is None:  # straight to the tables: the vocabulary's own Item memo would hold a second copy
            ids = tuple(lookup(kind, field) for kind, field in zip(ITEM_KINDS, key.split(FIELD_SEP)))
            if len(memo) < LOOKUP_CACHE_MAX:
                memo[key] = ids
        out.append(ids)
    return out
