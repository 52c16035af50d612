"""Samples -> padded id tensors: the vocabulary that maps string ids to embedding rows, and collate.

Every behaviour (a clicked, unclicked or label item) becomes five ids, one per side-info kind of the
papers' set F, in the column order of ITEM_KINDS. Row 0 of every kind is padding and "unknown": an
empty string, or an id the vocabulary has not seen when it is not allowed to grow, maps to 0.

Samples are duck-typed (stream/samples.py writes them): `s.windows.short / .long / .unclicked` and
`s.labels` are sequences of objects with `.item` (an xdm.records.Item), `s.profile` is a tuple of
(name, value) pairs. This module imports nothing from `stream`.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from xdm.records import Item

ITEM_KINDS: tuple[str, ...] = ("item", "leaf", "top", "brand", "shop")  # last axis of behaviour tensors
LOOKUP_CACHE_MAX = 500_000  # memoised item lookups kept by a vocabulary
PROFILE_PREFIX = "profile:"  # a profile field `gender` is the vocabulary kind `profile:gender`


def profile_kind(name: str) -> str:
    """Vocabulary kind (and embedding table name) of one user profile field."""
    return PROFILE_PREFIX + name


@dataclass
class Batch:
    """One mini-batch of samples as long-id tensors, right-padded with 0; every L and K is at least 1."""

    short: Tensor  # [B, Ls, 5] short-term clicked session S+ (SDM's S^u), oldest first
    short_len: Tensor  # [B] valid positions in `short`; 0 for an empty session
    long: Tensor  # [B, Ll, 5] long-term clicked behaviours (SDM's L^u)
    long_len: Tensor  # [B]
    unclicked: Tensor  # [B, Lu, 5] impressed-but-unclicked items S- (eq. 3)
    unclicked_len: Tensor  # [B]
    labels: Tensor  # [B, K, 5] next k clicked items C_{u,t}; width 1 and length 0 when absent (serving)
    label_len: Tensor  # [B]
    profile: Tensor  # [B, P] one row id per profile field, in Vocabulary.profile_fields order

    @property
    def size(self) -> int:
        return int(self.short.shape[0])

    def to(self, device: torch.device | str) -> Batch:
        return dataclasses.replace(
            self, **{f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)}
        )


class Vocabulary:
    """String id -> embedding row, one table per kind; grows on `add`, never on `lookup`.

    Rows are handed out in first-seen order, so a model's embedding rows stay valid as the vocabulary
    grows; the model only needs to grow its tables to `sizes()`. Item rows unseen for a while can be
    evicted (`evict_items`): their ids are forgotten and their rows are handed to the next new items,
    whose embedding rows the trainer re-initialises, so a long-running learner's tables stop growing
    once the live catalogue stops growing.
    """

    def __init__(self, profile_fields: Sequence[str] = ()) -> None:
        self.profile_fields: tuple[str, ...] = tuple(profile_fields)
        self.kinds: tuple[str, ...] = ITEM_KINDS + tuple(profile_kind(f) for f in self.profile_fields)
        self._rows: dict[str, dict[str, int]] = {kind: {} for kind in self.kinds}
        self._keys: dict[str, list[str]] = {kind: [""] for kind in self.kinds}
        self._counts: list[int] = [0]  # item occurrences as labels, indexed by item row
        self._last_seen: list[int] = [0]  # latest sample time (ms) an item row appeared in
        self._free_items: list[int] = []  # evicted item rows, reused by the next new items
        self.recycled: list[int] = []  # reused rows the model has not re-initialised yet (trainer drains it)
        self.recounted: set[int] = set()  # item rows whose count changed since the sampler last read them (trainer drains it)
        self._mutations = 0  # ids added or evicted so far; invalidates the lookup memo
        self._lookup_cache: dict[tuple[str, ...], tuple[int, ...]] = {}
        self._lookup_version = 0  # _mutations when the memo was last valid
        self._add_memo: dict[tuple[str, ...], tuple[int, ...]] = {}

    def add(self, kind: str, key: str) -> int:
        """Row of `key`, adding it if new; the empty string is "unknown" and stays 0."""
        rows = self._table(kind)
        if not key:
            return 0
        row = rows.get(key)
        if row is not None:
            return row
        if kind == "item" and self._free_items:
            row = self._free_items.pop()
            self._keys[kind][row] = key
            self.recycled.append(row)
        else:
            row = len(self._keys[kind])
            self._keys[kind].append(key)
            if kind == "item":
                self._counts.append(0)
                self._last_seen.append(0)
        rows[key] = row
        self._mutations += 1
        return row

    def lookup(self, kind: str, key: str) -> int:
        """Row of `key`, or 0 when unknown; never grows."""
        return self._table(kind).get(key, 0) if key else 0

    def add_item(self, item: Item) -> tuple[int, ...]:
        """Rows of an item's five ids, adding the new ones; memoised (training collates ~100 items a
        sample, and the online learner collates every batch again for each rehearsal step: 50 -> 21 ms a
        batch of 256). Adding ids never moves a row, so only eviction drops the memo."""
        key = _item_keys(item)
        rows = self._add_memo.get(key)
        if rows is None:
            rows = self._add_memo[key] = tuple(self.add(kind, k) for kind, k in zip(ITEM_KINDS, key))
        return rows

    def lookup_item(self, item: Item) -> tuple[int, ...]:
        """Rows of an item's five ids, without growing; memoised, since serving looks up the same items
        for every request (the memo is dropped whenever the vocabulary changes)."""
        return self.lookup_items((item,))[0]

    def lookup_items(self, items: Sequence[Item]) -> list[tuple[int, ...]]:
        """lookup_item over a window: the memo is checked once per window, not once per item (collate
        runs this on every Recall, ~100 items a user)."""
        cache = self._lookup_cache
        if self._lookup_version != self._mutations:
            cache.clear()
            self._lookup_version = self._mutations
        get, out = cache.get, []
        for item in items:
            # keyed by the five strings, not the Item: tuples of strings or ints are not tracked by the
            # garbage collector, so the memo holds no tracked object per item for full collections to walk
            key = _item_keys(item)
            ids = get(key)
            if ids is None:
                ids = self._lookup_uncached(item)
                if len(cache) < LOOKUP_CACHE_MAX:
                    cache[key] = ids
            out.append(ids)
        return out

    def _lookup_uncached(self, item: Item) -> tuple[int, ...]:
        r = self._rows
        return (r["item"].get(item.item_id, 0), r["leaf"].get(item.leaf_cat, 0), r["top"].get(item.top_cat, 0),
                r["brand"].get(item.brand, 0), r["shop"].get(item.shop, 0))

    def observe(self, item_row: int, times: int = 1) -> None:
        """Count an occurrence of an item (collate counts labels: the classes the sampler draws)."""
        if item_row > 0:
            self._counts[item_row] += times
            self.recounted.add(item_row)

    def touch_items(self, rows: Sequence[int], ts_ms: int) -> None:
        """Mark item rows as seen at sample time ts_ms (eviction is by event time, not wall clock)."""
        last = self._last_seen
        for row in rows:
            if row > 0 and last[row] < ts_ms:
                last[row] = ts_ms

    def evict_items(self, before_ms: int) -> list[int]:
        """Forget items last seen before `before_ms`; returns their rows, now free for new items."""
        evicted = []
        table, keys = self._rows["item"], self._keys["item"]
        for row in range(1, len(keys)):
            if keys[row] and self._last_seen[row] < before_ms:
                del table[keys[row]]
                keys[row] = ""
                self._counts[row] = 0
                self.recounted.add(row)
                self._last_seen[row] = 0
                evicted.append(row)
        self._free_items.extend(sorted(evicted, reverse=True))  # pop() hands out the lowest row first
        self._mutations += len(evicted)
        if evicted:
            self._add_memo.clear()  # evicted rows go to new items
        return evicted

    def newest_item_time(self) -> int:
        """Latest sample time (ms) any item was seen at; 0 before the first batch."""
        return max(self._last_seen)

    def live_items(self) -> list[int]:
        """Item rows that currently hold an item (not padding, not evicted)."""
        return [row for row, key in enumerate(self._keys["item"]) if row > 0 and key]

    @property
    def counts(self) -> list[int]:
        """Occurrence count per item row (index 0 is padding and stays 0); feed to the sampler."""
        return list(self._counts)

    def count(self, row: int) -> int:
        """Occurrence count of one item row (the O(1) read; `counts` copies all of them)."""
        return self._counts[row]

    def key(self, kind: str, row: int) -> str:
        """The string id of a row ("" for row 0): maps item output rows back to item ids when publishing."""
        return self._keys[kind][row]

    def size(self, kind: str) -> int:
        """Rows an embedding table of this kind needs, padding row included."""
        self._table(kind)
        return len(self._keys[kind])

    def sizes(self) -> dict[str, int]:
        return {kind: len(self._keys[kind]) for kind in self.kinds}

    def state_dict(self) -> dict[str, Any]:
        return {
            "profile_fields": list(self.profile_fields),
            "keys": {kind: list(keys) for kind, keys in self._keys.items()},
            "counts": list(self._counts),
            "last_seen": list(self._last_seen),
            "free_items": list(self._free_items),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        fresh = Vocabulary(state["profile_fields"])
        for kind, keys in state["keys"].items():
            fresh._table(kind)
            fresh._keys[kind] = list(keys)
            fresh._rows[kind] = {key: row for row, key in enumerate(keys) if row > 0 and key}
        fresh._counts = list(state["counts"])
        fresh._last_seen = list(state.get("last_seen", [0] * len(fresh._counts)))
        fresh._free_items = list(state.get("free_items", []))
        if not len(fresh._counts) == len(fresh._last_seen) == len(fresh._keys["item"]):
            raise ValueError("vocabulary state is inconsistent: counts and item keys differ in length")
        self.__dict__.update(fresh.__dict__)

    def _table(self, kind: str) -> dict[str, int]:
        try:
            return self._rows[kind]
        except KeyError:
            raise ValueError(f"unknown vocabulary kind {kind!r}; known: {', '.join(self.kinds)}") from None


def collate(samples: Sequence[Any], vocab: Vocabulary, grow: bool, count: bool = True) -> Batch:
    """Pad a list of samples into a Batch.

    grow=True (training) adds unseen ids to `vocab` and, unless count=False (a rehearsal step over
    samples already counted), counts every label item in `vocab.counts`;
    grow=False (evaluation, serving) maps unseen ids to 0. An unseen item keeps its known side-info ids
    in the windows (its q_i still carries leaf, brand, ...), but is dropped from the labels: row 0 cannot
    be a softmax target.
    """
    if not samples:
        raise ValueError("collate needs at least one sample")
    add_item = vocab.add_item

    def to_ids(behaviours) -> list[tuple[int, ...]]:
        items = [b.item for b in behaviours]
        return [add_item(i) for i in items] if grow else vocab.lookup_items(items)

    short, long_, unclicked, labels, profile = [], [], [], [], []
    for s in samples:
        w = s.windows
        short.append(to_ids(w.short))
        long_.append(to_ids(w.long))
        unclicked.append(to_ids(w.unclicked))
        row_labels = [ids for ids in to_ids(s.labels) if ids[0] != 0]
        if grow and count:
            for ids in row_labels:
                vocab.observe(ids[0])
        labels.append(row_labels)
        fields = dict(s.profile)  # fields not in vocab.profile_fields are ignored
        add_or_lookup = vocab.add if grow else vocab.lookup
        profile.append([add_or_lookup(profile_kind(f), fields.get(f, "")) for f in vocab.profile_fields])
    short_t, short_len = pad_ids(short)
    long_t, long_len = pad_ids(long_)
    unclicked_t, unclicked_len = pad_ids(unclicked)
    labels_t, label_len = pad_ids(labels)
    return Batch(
        short=short_t, short_len=short_len, long=long_t, long_len=long_len,
        unclicked=unclicked_t, unclicked_len=unclicked_len, labels=labels_t, label_len=label_len,
        profile=torch.tensor(profile, dtype=torch.long).reshape(len(samples), len(vocab.profile_fields)),
    )


def length_buckets(
    samples: Sequence[Any], batch_size: int, rng: random.Random | None = None
) -> Iterator[list[int]]:
    """Index lists of batches whose sequences have similar lengths (papers §4.3), so little is padding.

    Sorted by (short, unclicked, long) window length; with `rng`, equal lengths are shuffled and the
    batch order too, so epochs differ while each batch stays length-homogeneous.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    order = list(range(len(samples)))
    if rng is not None:
        rng.shuffle(order)
    order.sort(key=lambda i: _lengths(samples[i]))  # stable: the shuffle breaks ties
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if rng is not None:
        rng.shuffle(batches)
    yield from batches


def _lengths(sample: Any) -> tuple[int, int, int]:
    w = sample.windows
    return len(w.short), len(w.unclicked), len(w.long)


def _item_keys(item: Item) -> tuple[str, str, str, str, str]:
    return item.item_id, item.leaf_cat, item.top_cat, item.brand, item.shop


def pad_ids(rows: list[list[tuple[int, ...]]]) -> tuple[Tensor, Tensor]:
    """[B][L_b][5] ragged ids -> ([B, max(1, max L_b), 5] zero-padded, [B] lengths)."""
    width = max(1, max(len(r) for r in rows))
    blank = (0,) * len(ITEM_KINDS)
    # one numpy conversion of the padded rows: half the time of a torch.tensor per row (per Recall, too)
    padded = np.array([r + [blank] * (width - len(r)) for r in rows], dtype=np.int64)
    return torch.from_numpy(padded.reshape(len(rows), width, len(ITEM_KINDS))), torch.tensor(
        [len(r) for r in rows], dtype=torch.long)
