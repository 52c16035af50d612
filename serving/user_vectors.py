"""The fused user vector z of users from their current windows, with a version's user tower.

The windows arrive as the reader caches them, stored rows (stream.windows.WindowRows): the short-term
and unclicked windows become their items' q_i through the version's kept encodings
(serving/item_encodings.py), the long-term window its items' vocabulary rows; a request builds no
per-item Python objects, and the server keeps no Item records (which the garbage collector would walk
in every full collection).
"""

from __future__ import annotations

import numpy as np
import torch

from learner.batch import pad_ids
from learner.model_store import Tower
from serving.item_encodings import ItemEncodings
from stream.windows import WindowRows, item_ids_of


def user_vectors(tower: Tower, windows: list[WindowRows]) -> np.ndarray:
    """z for each user's windows (eqs. 6-8 per the tower's variant), float32 [B, D]; no autograd."""
    if tower.encodings is None:
        tower.encodings = ItemEncodings(tower.model, tower.vocab)
    enc: ItemEncodings = tower.encodings
    short_keys, long_keys, unclicked_keys = ([[key for _, key in w[i]] for w in windows] for i in range(3))
    if tower.model.reads_unclicked:
        (q_short, short_len), (q_unclicked, unclicked_len) = enc.q_of(short_keys, unclicked_keys)
    else:  # SDM and z = h variants: the window is not an input of z
        ((q_short, short_len),) = enc.q_of(short_keys)
        q_unclicked, unclicked_len = q_short[:, :1], torch.zeros_like(short_len)
    long, long_len = pad_ids([[enc.item_ids(key) for key in keys] for keys in long_keys])
    profile = torch.zeros(len(windows), len(tower.vocab.profile_fields), dtype=torch.long)
    with torch.inference_mode():
        encode = tower.encode or tower.model.user_vector_from_q
        z = encode(q_short, short_len, long, long_len, q_unclicked, unclicked_len, profile)
    return z.float().cpu().numpy()


def clicked_items(windows: WindowRows) -> set[str]:
    short, long, _ = windows
    return set(item_ids_of([key for _, key in (*short, *long)]))


def has_clicks(windows: WindowRows | None) -> bool:
    return windows is not None and bool(windows[0] or windows[1])
