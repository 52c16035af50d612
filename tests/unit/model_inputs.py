"""Hand-made model inputs shared by the model and base-encoder tests: items with a side-info hierarchy and
samples shaped as the stream emits them (windows of behaviours, labels, a profile)."""

from __future__ import annotations

from types import SimpleNamespace

from xdm.records import Item

TINY = dict(embed_dim=8, n_heads=2, n_negatives=16, profile_fields="age,gender", dropout=0.0)


def item(i: int) -> Item:
    return Item(f"i{i}", f"leaf{i % 3}", f"top{i % 2}", f"brand{i % 4}", f"shop{i % 5}")


def sample(short=(), long=(), unclicked=(), labels=(), profile=(("age", "30"), ("gender", "f"))) -> SimpleNamespace:
    beh = lambda ids: [SimpleNamespace(item=item(i)) for i in ids]  # noqa: E731
    windows = SimpleNamespace(short=beh(short), long=beh(long), unclicked=beh(unclicked))
    return SimpleNamespace(windows=windows, labels=beh(labels), profile=tuple(profile))
