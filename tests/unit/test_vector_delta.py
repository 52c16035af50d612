"""learner/vector_delta.py: a delta on a base, merged back, gives the version's vectors exactly."""

from __future__ import annotations

import numpy as np
import pytest

from learner.vector_delta import Base, diff, merge, merge_hits


def _table(n: int, d: int = 4, seed: int = 0) -> tuple[list[str], np.ndarray]:
    return [f"i{r}" for r in range(n)], np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def _as_dict(ids: list[str], vectors: np.ndarray) -> dict[str, bytes]:
    return {item: vectors[r].tobytes() for r, item in enumerate(ids)}


def test_untouched_rows_are_not_in_the_delta_and_one_changed_element_is():
    ids, vectors = _table(100)
    now = vectors.copy()
    now[7, 3] = np.nextafter(now[7, 3], np.float32(10))  # the smallest change a float32 can make
    now[42] += 1.0
    delta = diff(Base(ids, vectors), ids, now)
    assert delta.ids == ["i7", "i42"] and delta.removed == []
    assert np.array_equal(delta.vectors, now[[7, 42]])


def test_new_items_are_appended_and_evicted_ones_are_tombstoned():
    ids, vectors = _table(50)
    # row 10's item evicted and its row recycled for a new item, two more items added at the end
    now_ids = ids[:10] + ["new-a"] + ids[11:] + ["new-b", "new-c"]
    now = np.concatenate([vectors, _table(2, seed=1)[1]])
    now[10] = 5.0
    delta = diff(Base(ids, vectors), now_ids, now)
    assert sorted(delta.ids) == ["new-a", "new-b", "new-c"]
    assert delta.removed == ["i10"]
    merged_ids, merged = merge(ids, vectors, delta.ids, delta.vectors, delta.removed)
    assert _as_dict(merged_ids, merged) == _as_dict(now_ids, now)


def test_a_chain_of_deltas_on_one_base_merges_to_each_version():
    ids, vectors = _table(200)
    base = Base(ids, vectors)
    rng = np.random.default_rng(3)
    now_ids, now = list(ids), vectors.copy()
    for _ in range(5):
        touched = rng.choice(len(now_ids), size=15, replace=False)
        now[touched] += rng.standard_normal((15, now.shape[1])).astype(np.float32)
        delta = diff(base, now_ids, now)
        assert len(delta.ids) <= 15 * 5
        merged_ids, merged = merge(ids, vectors, delta.ids, delta.vectors, delta.removed)
        assert _as_dict(merged_ids, merged) == _as_dict(now_ids, now)


def test_nan_counts_as_changed():
    ids, vectors = _table(3)
    vectors[1, 0] = np.nan
    assert diff(Base(ids, vectors), ids, vectors.copy()).ids == ["i1"]


def test_mismatched_lengths_raise():
    ids, vectors = _table(3)
    with pytest.raises(ValueError, match="3 ids but 2 vectors"):
        diff(Base(ids, vectors), ids, vectors[:2])


def test_base_hits_the_delta_overrides_give_way_to_the_delta():
    base_hits = [("a", 0.9), ("b", 0.8), ("c", 0.7), ("d", 0.6)]
    delta_hits = [("b", 0.5), ("e", 0.75)]  # b changed and fell; a was removed
    assert merge_hits(delta_hits, base_hits, {"a", "b"}, 3) == [("e", 0.75), ("c", 0.7), ("d", 0.6)]
