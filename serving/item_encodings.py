"""Each served item's q_i, computed once per version: the short-term and unclicked windows of a Recall
are then one gather from a table instead of five embedding lookups, a concatenation and a projection.

q_i (learner.model.ItemEmbedding: the item's five side-info embeddings, concatenated, projected, tanh)
depends on nothing but the item and the version's weights at inference (dropout is off), so it can be
kept. Measured on the user tower at 100 k items, a batch of 4 users with Table 1's window lengths, one
core: q of the unclicked window 0.40 ms and of the session 0.14 ms of the eager tower's 1.6 ms.

Keys are stored window rows (stream.windows): an item's key carries its side-info, so an item whose
catalogue entry changed is a new key with its own q_i. The table holds at most `capacity` keys
(serving.item_encodings_max); when a batch would pass that, it starts over (the keys still in use come
back on their next batch; a batch that alone holds more keys keeps them all until the next one starts over).
"""

from __future__ import annotations

import threading

import numpy as np
import torch
from torch import Tensor

from learner.batch import ITEM_KINDS, LOOKUP_CACHE_MAX
from stream.windows import FIELD_SEP

CAPACITY = 200_000  # keys kept per version (serving.item_encodings_max's default)


class ItemEncodings:
    """q_i rows of one version's user tower, by stored item key; row 0 is a zero pad row."""

    def __init__(self, model: torch.nn.Module, vocab, capacity: int = CAPACITY) -> None:
        self.model = model
        self.vocab = vocab
        self.capacity = capacity
        self.ids: dict[str, tuple[int, ...]] = {}  # key -> the vocabulary's five rows (the long-term window's input)
        self._row: dict[str, int] = {}
        weight = model.q.proj.weight
        self._table = torch.zeros(1024, weight.shape[0], dtype=weight.dtype, device=weight.device)
        self._size = 1
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._size - 1

    def q_of(self, *groups: tuple[list[str], np.ndarray]) -> list[Tensor]:
        """For each group (a window of every user of a batch: its keys flat, user after user, and [B] lengths;
        e.g. the sessions, then the unclicked windows): [B, max(1, max L), D] q_i right-padded with zeros.
        Keys new to any group cost one tower call together. Locked: with serving.batch_runners > 1 two
        compute threads share a version, and a table that starts over between one thread's rows and its
        gather would hand it other items' q_i."""
        with self._lock:
            rows = self._rows([key for keys, _ in groups for key in keys])
            out, start = [], 0
            for keys, lengths in groups:
                out.append(self._gather(rows[start:start + len(keys)], lengths))
                start += len(keys)
            return out

    def _rows(self, keys: list[str]) -> np.ndarray:
        """Each key's table row, computing q_i for keys not seen yet (one tower call for all of them)."""
        get = self._row.get
        rows = [get(key, 0) for key in keys]  # 0, the pad row: not kept yet
        if 0 not in rows:
            return np.array(rows, dtype=np.int64)
        new = list(dict.fromkeys(key for key in keys if key not in self._row))
        if self._size + len(new) > self.capacity + 1:
            self._row.clear()
            self._size = 1
            new = list(dict.fromkeys(keys))
        self._add(new)
        row = self._row
        return np.array([row[key] for key in keys], dtype=np.int64)

    def _gather(self, rows: np.ndarray, lengths: np.ndarray) -> Tensor:
        index = torch.from_numpy(right_padded(rows, lengths).reshape(-1)).to(self._table.device)
        return self._table.index_select(0, index).view(len(lengths), -1, self._table.shape[1])

    def item_ids(self, key: str) -> tuple[int, ...]:
        """The vocabulary's five rows of a key (unknown values map to the vocabulary's unknown rows)."""
        ids = self.ids.get(key)
        if ids is None:
            lookup = self.vocab.lookup
            ids = tuple(lookup(kind, value) for kind, value in zip(ITEM_KINDS, key.split(FIELD_SEP)))
            if len(self.ids) < LOOKUP_CACHE_MAX:  # bounded like the vocabulary's own memo
                self.ids[key] = ids
        return ids

    def _add(self, keys: list[str]) -> None:
        ids = torch.tensor([self.item_ids(key) for key in keys], dtype=torch.long, device=self._table.device)
        with torch.no_grad():  # not inference_mode: the table is written to outside it, batch after batch
            q = self.model.q(self.model.embed, ids)
        end = self._size + len(keys)
        if end > self._table.shape[0]:
            grown = torch.zeros(max(end, min(2 * self._table.shape[0], self.capacity + 1)), self._table.shape[1],
                                dtype=self._table.dtype, device=self._table.device)
            grown[: self._size] = self._table[: self._size]
            self._table = grown
        self._table[self._size:end] = q
        for offset, key in enumerate(keys):
            self._row[key] = self._size + offset
        self._size = end


def right_padded(flat: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Rows of B ragged sequences given flat (sequence after sequence) -> [B, max(1, max L), ...], zeros after
    each sequence's own length; one masked assignment instead of a Python loop per sequence."""
    width = max(1, int(lengths.max(initial=0)))
    out = np.zeros((len(lengths), width, *flat.shape[1:]), dtype=flat.dtype)
    out[np.arange(width) < lengths[:, None]] = flat  # the mask is True row by row, in the flat order
    return out
