"""Vocabulary, collate and length bucketing (learner/batch.py)."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch

from learner.batch import ITEM_KINDS, Batch, Vocabulary, collate, length_buckets, profile_kind
from xdm.records import Item


def item(i: int, leaf: str | None = None) -> Item:
    return Item(f"i{i}", leaf if leaf is not None else f"leaf{i % 3}", f"top{i % 2}", f"brand{i % 4}", "")


def sample(short=(), long=(), unclicked=(), labels=(), profile=(("age", "30"), ("gender", "f"))):
    beh = lambda ids: [SimpleNamespace(item=x if isinstance(x, Item) else item(x)) for x in ids]  # noqa: E731
    windows = SimpleNamespace(short=beh(short), long=beh(long), unclicked=beh(unclicked))
    return SimpleNamespace(windows=windows, labels=beh(labels), profile=tuple(profile))


def test_vocabulary_grows_on_add_not_on_lookup_and_reserves_row_zero():
    vocab = Vocabulary(["gender"])
    assert vocab.add("item", "a") == 1
    assert vocab.add("item", "b") == 2
    assert vocab.add("item", "a") == 1
    assert vocab.add("item", "") == 0  # empty = unknown, never a row
    assert vocab.lookup("item", "zzz") == 0
    assert vocab.size("item") == 3
    assert vocab.key("item", 2) == "b" and vocab.key("item", 0) == ""
    assert vocab.sizes() == {"item": 3, "leaf": 1, "top": 1, "brand": 1, "shop": 1, "profile:gender": 1}
    with pytest.raises(ValueError, match="unknown vocabulary kind"):
        vocab.add("color", "red")


def test_vocabulary_state_dict_round_trip_keeps_rows_and_counts():
    vocab = Vocabulary(["gender"])
    collate([sample([1, 2], [3], [4], [5, 5, 6], profile=(("gender", "m"),))], vocab, grow=True)
    restored = Vocabulary()
    restored.load_state_dict(vocab.state_dict())
    assert restored.sizes() == vocab.sizes()
    assert restored.counts == vocab.counts
    assert restored.profile_fields == ("gender",)
    assert all(restored.lookup_item(item(i)) == vocab.lookup_item(item(i)) for i in range(1, 7))
    assert restored.add("item", "new") == vocab.size("item")


def test_collate_pads_ragged_windows_including_empty_ones():
    vocab = Vocabulary(["age", "gender"])
    batch = collate(
        [
            sample(short=[1, 2, 3], long=[1], unclicked=[], labels=[4, 5]),
            sample(short=[], long=[], unclicked=[6, 7], labels=[8], profile=(("gender", "m"),)),
        ],
        vocab, grow=True,
    )
    assert batch.size == 2
    assert batch.short.shape == (2, 3, len(ITEM_KINDS))
    assert batch.short_len.tolist() == [3, 0]
    assert batch.long.shape == (2, 1, 5) and batch.long_len.tolist() == [1, 0]
    assert batch.unclicked.shape == (2, 2, 5) and batch.unclicked_len.tolist() == [0, 2]
    assert batch.labels.shape == (2, 2, 5) and batch.label_len.tolist() == [2, 1]
    assert int(batch.short[1].abs().sum()) == 0  # empty session is all padding
    assert int(batch.labels[1, 1].abs().sum()) == 0
    assert batch.short[0, 0].tolist() == list(vocab.lookup_item(item(1)))
    assert batch.short[0, 0, 4] == 0  # empty shop string -> unknown row 0
    # profile columns follow vocab.profile_fields; a missing field is 0
    assert batch.profile.shape == (2, 2)
    assert batch.profile[1].tolist() == [0, vocab.lookup(profile_kind("gender"), "m")]
    assert all(t.dtype == torch.long for t in vars(batch).values())


def test_collate_of_all_empty_windows_keeps_width_one():
    batch = collate([sample()], Vocabulary(), grow=True)
    for name in ("short", "long", "unclicked", "labels"):
        assert getattr(batch, name).shape == (1, 1, 5)
        assert getattr(batch, f"{'label' if name == 'labels' else name}_len").tolist() == [0]
    assert batch.profile.shape == (1, 0)


def test_collate_without_growth_maps_unknown_ids_to_zero_and_drops_unknown_labels():
    vocab = Vocabulary()
    collate([sample([1], labels=[2])], vocab, grow=True)
    sizes, counts = vocab.sizes(), vocab.counts
    unseen = Item("never-seen", leaf_cat="leaf1")  # its leaf is known, the item is not
    batch = collate([sample([unseen, 1], labels=[unseen, 2])], vocab, grow=False)
    assert vocab.sizes() == sizes and vocab.counts == counts
    assert batch.short_len.tolist() == [2]
    assert batch.short[0, 0, 0] == 0 and batch.short[0, 0, 1] == vocab.lookup("leaf", "leaf1")
    assert batch.label_len.tolist() == [1]
    assert batch.labels[0, 0, 0] == vocab.lookup("item", "i2")


def test_collate_with_growth_counts_label_items_for_the_sampler():
    vocab = Vocabulary()
    collate([sample([1], unclicked=[9], labels=[2, 2, 3]), sample(labels=[3])], vocab, grow=True)
    counts = vocab.counts
    assert counts[vocab.lookup("item", "i2")] == 2
    assert counts[vocab.lookup("item", "i3")] == 2
    assert counts[vocab.lookup("item", "i1")] == 0  # clicked history is not a label
    assert counts[vocab.lookup("item", "i9")] == 0
    assert counts[0] == 0 and len(counts) == vocab.size("item")


def test_collate_rejects_an_empty_list():
    with pytest.raises(ValueError, match="at least one sample"):
        collate([], Vocabulary(), grow=True)


def test_batch_to_moves_every_tensor():
    batch = collate([sample([1], [2], [3], [4])], Vocabulary(["age"]), grow=True)
    moved = batch.to(torch.device("cpu"))
    assert isinstance(moved, Batch)
    assert all(t.device.type == "cpu" for t in vars(moved).values())


def test_length_buckets_cover_every_sample_once_with_similar_lengths():
    rng = random.Random(3)
    samples = [sample(short=range(rng.randint(0, 9)), unclicked=range(rng.randint(0, 4))) for _ in range(50)]
    batches = list(length_buckets(samples, 8))
    assert sorted(i for b in batches for i in b) == list(range(50))
    assert [len(b) for b in batches] == [8] * 6 + [2]
    firsts = [len(samples[b[0]].windows.short) for b in batches]
    assert firsts == sorted(firsts)  # no shuffling: batches come in length order
    for b in batches:  # sorted order: a batch spans a contiguous length range
        lens = [len(samples[i].windows.short) for i in b]
        assert lens == sorted(lens)


def test_length_buckets_shuffle_is_seeded_and_keeps_batches_homogeneous():
    samples = [sample(short=range(i % 5)) for i in range(40)]
    a = list(length_buckets(samples, 8, random.Random(7)))
    b = list(length_buckets(samples, 8, random.Random(7)))
    assert a == b
    for batch in a:
        assert len({len(samples[i].windows.short) for i in batch}) == 1
    with pytest.raises(ValueError):
        list(length_buckets(samples, 0))


def test_lookup_memo_follows_additions_and_evictions():
    vocab = Vocabulary()
    item = Item("i9", "leaf", "top", "brand", "shop")
    assert vocab.lookup_item(item) == (0, 0, 0, 0, 0)
    rows = vocab.add_item(item)
    assert vocab.lookup_item(item) == rows != (0, 0, 0, 0, 0)
    vocab.touch_items([rows[0]], 5)
    vocab.evict_items(before_ms=10)
    assert vocab.lookup_item(item)[0] == 0


def test_add_memo_is_dropped_when_items_are_evicted():
    """An evicted item's row goes to the next new item; the old item, seen again, must get its own row."""
    vocab = Vocabulary()
    old, new = Item("old", "leaf"), Item("new", "leaf")
    old_rows = vocab.add_item(old)
    assert vocab.add_item(old) is old_rows  # memoised
    vocab.touch_items([old_rows[0]], 5)
    assert vocab.evict_items(before_ms=10) == [old_rows[0]]
    new_rows = vocab.add_item(new)
    assert new_rows[0] == old_rows[0] and vocab.key("item", new_rows[0]) == "new"  # the row is reused
    again = vocab.add_item(old)
    assert again[0] not in (0, new_rows[0]) and vocab.key("item", again[0]) == "old"
    assert again[1] == old_rows[1]  # side-info rows are never evicted
