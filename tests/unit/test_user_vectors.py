"""Serving's user vectors from stored window rows (serving/user_vectors.py) against the training path."""

from __future__ import annotations

import pickle
import sys
import threading
from types import SimpleNamespace

import numpy as np
import torch

from learner.batch import Vocabulary, collate, pad_ids
from learner.model import XDM, config_for
from learner.model_store import Tower, VersionInfo
from serving.item_encodings import ItemEncodings, right_padded
from serving.user_vectors import clicked_items, has_clicks, user_vectors, user_vectors_of_keys, window_keys
from stream.windows import Behavior, Windows, rows_of, windows_of
from xdm.records import Item

T0 = 1_700_000_000_000


def item(i: int) -> Item:
    return Item(f"i{i}", f"leaf{i % 3}", f"top{i % 2}", f"brand{i % 4}", f"shop{i % 5}")


def windows(short=(), long=(), unclicked=()) -> Windows:
    beh = lambda ids: tuple(Behavior(T0 + k, item(i)) for k, i in enumerate(ids))  # noqa: E731
    return Windows(beh(short), beh(long), beh(unclicked))


USERS = [
    windows(short=[1, 2, 3], long=[4, 5], unclicked=[6]),
    windows(short=[], long=[1, 2, 3, 4, 5, 6], unclicked=[]),  # empty session and unclicked window
    windows(short=[2, 99], long=[], unclicked=[7, 8, 9, 10, 98]),  # 98 and 99: unknown to the vocabulary
]


def tower(variant: str) -> Tower:
    torch.manual_seed(0)
    cfg = config_for(variant, embed_dim=8, n_heads=2, n_negatives=4, dropout=0.0)
    vocab = Vocabulary(cfg.profile_field_names)
    for i in range(11):
        vocab.add_item(item(i))
    model = XDM(cfg, vocab.sizes()).eval()
    return Tower(model, vocab, VersionInfo(arm="a", version=1, collection="c", tower_uri="", published_ms=0, trained_samples=0, items=10), [])


def test_rows_round_trip_through_windows():
    for w in USERS:
        assert windows_of(rows_of(w)) == w


def test_z_from_rows_equals_z_from_the_training_collate():
    """One rule set, two paths in: the served z must be the z the model computes on a collated sample."""
    for variant in ("xdm", "sdm", "xdm_wo_conf_metric"):
        t = tower(variant)
        queries = [SimpleNamespace(windows=w, profile=(), labels=()) for w in USERS]
        with torch.inference_mode():
            expected = t.model.user_vector(collate(queries, t.vocab, grow=False)).numpy()
        served = user_vectors(t, [rows_of(w) for w in USERS])
        np.testing.assert_allclose(served, expected, rtol=0, atol=1e-6)
        assert t.vocab.size("item") == 12  # padding + 11 items: serving never grows the vocabulary


def test_encodings_map_each_item_key_once_and_unknown_items_keep_their_side_info():
    t = tower("xdm")
    user_vectors(t, [rows_of(USERS[2])])
    enc = t.encodings
    ids = enc.ids[rows_of(USERS[2])[0][1][1]]  # item 99: unknown id, known leaf/top/brand/shop
    assert ids[0] == 0 and all(r > 0 for r in ids[1:])
    short_and_unclicked = {key for w in (rows_of(USERS[2])[0], rows_of(USERS[2])[2]) for _, key in w}
    assert len(enc) == len(short_and_unclicked)
    user_vectors(t, [rows_of(USERS[2])])
    assert len(enc) == len(short_and_unclicked)  # kept, not computed again


def test_keys_new_to_the_session_and_the_unclicked_window_cost_one_tower_call(monkeypatch):
    t = tower("xdm")
    t.encodings = ItemEncodings(t.model, t.vocab)
    calls: list[int] = []
    real_q = t.model.q.forward
    monkeypatch.setattr(t.model.q, "forward", lambda embed, ids: calls.append(len(ids)) or real_q(embed, ids))
    user_vectors(t, [rows_of(w) for w in USERS])
    keys = {key for w in USERS for i in (0, 2) for _, key in rows_of(w)[i]}
    assert calls == [len(keys)]
    user_vectors(t, [rows_of(w) for w in USERS])
    assert calls == [len(keys)]  # all kept: no call


def test_a_full_table_starts_over_and_answers_stay_the_same():
    t = tower("xdm")
    first = user_vectors(t, [rows_of(w) for w in USERS])
    t.encodings = ItemEncodings(t.model, t.vocab, capacity=4)
    np.testing.assert_allclose(user_vectors(t, [rows_of(USERS[0])]), first[:1], rtol=0, atol=1e-6)
    assert len(t.encodings) == 4  # full: its session's 3 keys and its unclicked window's 1
    np.testing.assert_allclose(user_vectors(t, [rows_of(USERS[2])]), first[2:], rtol=0, atol=1e-6)
    assert len(t.encodings) == 7  # started over: this batch's keys only (a batch's own keys are kept whole)
    # more keys than the capacity in one batch
    np.testing.assert_allclose(user_vectors(t, [rows_of(w) for w in USERS]), first, rtol=0, atol=1e-6)


def test_two_compute_threads_sharing_a_small_table_get_their_own_users_q():
    """batch_runners > 1 in thread mode: tables that start over under one thread must not leak other
    items' q_i into the other's batch (a tiny switch interval makes the threads interleave often)."""
    t = tower("xdm")
    expected = {i: user_vectors(t, [rows_of(w)]) for i, w in enumerate(USERS)}
    t.encodings = ItemEncodings(t.model, t.vocab, capacity=3)
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    wrong: list[int] = []

    def serve(first: int) -> None:
        for k in range(300):
            i = (first + k) % len(USERS)
            if not np.allclose(user_vectors(t, [rows_of(USERS[i])]), expected[i], rtol=0, atol=1e-6):
                wrong.append(i)

    try:
        threads = [threading.Thread(target=serve, args=(n,)) for n in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(previous)
    assert not wrong


def test_clicked_items_and_has_clicks_read_short_and_long_only():
    rows = rows_of(USERS[0])
    assert clicked_items(rows) == {"i1", "i2", "i3", "i4", "i5"}
    assert has_clicks(rows) and has_clicks(rows_of(USERS[1]))
    assert not has_clicks(rows_of(windows(unclicked=[1, 2]))) and not has_clicks(None)


def _z_padded_user_by_user(t: Tower, rows: list) -> np.ndarray:
    """The collate before window keys crossed the pipe: each user's windows padded in a loop, the same kept
    q_i table and vocabulary rows; the reference the batch's masked padding must equal bit for bit."""
    enc = t.encodings

    def q(kind: int) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(1, max(len(r[kind]) for r in rows))
        index = np.zeros((len(rows), width), dtype=np.int64)
        for i, r in enumerate(rows):
            index[i, : len(r[kind])] = [enc._row[key] for _, key in r[kind]]
        return enc._table[torch.from_numpy(index)], torch.tensor([len(r[kind]) for r in rows])

    (q_short, short_len), (q_unclicked, unclicked_len) = q(0), q(2)
    long, long_len = pad_ids([[enc.item_ids(key) for _, key in r[1]] for r in rows])
    profile = torch.zeros(len(rows), len(t.vocab.profile_fields), dtype=torch.long)
    with torch.inference_mode():
        return t.model.user_vector_from_q(q_short, short_len, long, long_len, q_unclicked, unclicked_len, profile).numpy()


def test_window_keys_sent_down_a_pipe_give_exactly_the_z_of_the_rows_padded_user_by_user():
    t = tower("xdm")
    for batch in ([rows_of(w) for w in USERS], [rows_of(w) for w in reversed(USERS)], [rows_of(USERS[1])]):
        keys = pickle.loads(pickle.dumps(window_keys(batch)))  # what the compute process receives
        served = user_vectors_of_keys(t, keys)
        np.testing.assert_array_equal(served, _z_padded_user_by_user(t, batch))


def test_right_padded_puts_each_sequence_in_its_own_row():
    lengths = np.array([2, 0, 3])
    flat = np.arange(1, 11).reshape(5, 2)
    padded = right_padded(flat, lengths)
    assert padded.shape == (3, 3, 2)
    np.testing.assert_array_equal(padded[0, :2], flat[:2])
    np.testing.assert_array_equal(padded[2], flat[2:5])
    assert not padded[1].any() and not padded[0, 2].any()
    assert right_padded(np.zeros((0, 5), np.int64), np.array([0, 0])).shape == (2, 1, 5)  # never zero-wide
