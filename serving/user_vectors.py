"""The fused user vector z of users from their current windows, with a version's user tower.

The windows arrive as the reader caches them, stored rows (stream.windows.WindowRows). The tower reads
only their item keys, so the server sends its compute process just those (WindowKeys: each window's keys
flat over the batch, and the lengths), not the rows: with the bench's Table-1 windows (~105 items a user)
pickling the rows (a tuple and a timestamp per item) took the server 87 us a batch of 3 users against
43 us for the keys, and unpickling them and listing their keys took the compute process 89 us against
14 us (one core). The short-term and unclicked windows become their items' q_i through the version's
kept encodings (serving/item_encodings.py), the long-term window its items' vocabulary rows; a batch is
padded with numpy masks, not a Python loop per user, and the server keeps no Item records (which the
garbage collector would walk in every full collection).
"""

from __future__ import annotations

from itertools import chain
from operator import itemgetter
from typing import NamedTuple

import numpy as np
import torch

from learner.batch import ITEM_KINDS
from learner.model_store import Tower
from serving.item_encodings import ItemEncodings, right_padded
from stream.windows import WindowRows, item_ids_of

_key = itemgetter(1)


class WindowKeys(NamedTuple):
    """What the user tower reads of a batch's windows: per window kind, every user's item keys, user after
    user, and each user's (short, long, unclicked) lengths, flat. Plain lists of strings and ints: cheap to
    pickle down the compute process's pipe."""

    short: list[str]
    long: list[str]
    unclicked: list[str]
    lengths: list[int]  # [3 B]: user 0's short, long, unclicked lengths, then user 1's, ...


def window_keys(windows: list[WindowRows]) -> WindowKeys:
    short, long, unclicked = (list(map(_key, chain.from_iterable(w[kind] for w in windows))) for kind in range(3))
    return WindowKeys(short, long, unclicked, [len(window) for w in windows for window in w])


def user_vectors(tower: Tower, windows: list[WindowRows]) -> np.ndarray:
    """z for each user's windows (eqs. 6-8 per the tower's variant), float32 [B, D]; no autograd."""
    return user_vectors_of_keys(tower, window_keys(windows))


def user_vectors_of_keys(tower: Tower, keys: WindowKeys) -> np.ndarray:
    """`user_vectors` of a batch's window keys (window_keys), as the compute process receives them."""
    if tower.encodings is None:
        tower.encodings = ItemEncodings(tower.model, tower.vocab)
    enc: ItemEncodings = tower.encodings
    short_len, long_len, unclicked_len = np.array(keys.lengths, dtype=np.int64).reshape(-1, 3).T.copy()
    if tower.model.reads_unclicked:
        q_short, q_unclicked = enc.q_of((keys.short, short_len), (keys.unclicked, unclicked_len))
    else:  # SDM and z = h variants: the window is not an input of z
        (q_short,) = enc.q_of((keys.short, short_len))
        q_unclicked, unclicked_len = q_short[:, :1], np.zeros_like(short_len)
    long_ids = np.array([enc.item_ids(key) for key in keys.long], dtype=np.int64).reshape(-1, len(ITEM_KINDS))
    long = torch.from_numpy(right_padded(long_ids, long_len))
    profile = torch.zeros(len(short_len), len(tower.vocab.profile_fields), dtype=torch.long)
    with torch.inference_mode():
        encode = tower.encode or tower.model.user_vector_from_q
        z = encode(q_short, torch.from_numpy(short_len), long, torch.from_numpy(long_len), q_unclicked,
                   torch.from_numpy(unclicked_len), profile)
    return z.float().cpu().numpy()


def clicked_items(windows: WindowRows) -> set[str]:
    short, long, _ = windows
    return set(item_ids_of([key for _, key in (*short, *long)]))


def has_clicks(windows: WindowRows | None) -> bool:
    return windows is not None and bool(windows[0] or windows[1])
