"""The catalogue mirror's RocksDB store answers as the dict did: latest value per key, tombstones delete,
bad records leave the last good value, and a reopened store starts empty for the mirror to refill."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiokafka.structs import ConsumerRecord

from stream.app import catalogue_values
from stream.mirror import TopicMirror
from stream.mirror_values import DiskValues
from stream.wire import decode_item, encode_item
from xdm.config import apply_overrides, load_config
from xdm.records import Item


def _store(path: Path, cache_size: int = 2) -> DiskValues[Item]:
    return DiskValues(path / "catalogue", encode_item, decode_item, cache_size)


def _record(key: bytes | None, value: bytes | None, offset: int = 0) -> ConsumerRecord:
    return ConsumerRecord(topic="items", partition=0, offset=offset, timestamp=0, timestamp_type=0, key=key,
                          value=value, checksum=None, serialized_key_size=0, serialized_value_size=0, headers=())


def test_put_get_overwrite_and_pop_with_more_items_than_the_cache_holds(tmp_path):
    store = _store(tmp_path, cache_size=2)
    items = [Item(f"i{n}", f"leaf{n % 3}", "top", f"b{n}", f"s{n}") for n in range(20)]
    for item in items:
        store[item.item_id] = item
    assert len(store) == 20
    assert [store.get(item.item_id) for item in items] == items  # 18 of them come back from disk
    store["i19"] = Item("i19", "moved")  # cached key: the cache must not serve the old value
    store["i0"] = Item("i0", "moved")  # not cached
    assert store.get("i19") == Item("i19", "moved") and store.get("i0") == Item("i0", "moved")
    assert len(store) == 20  # an overwrite is not a new key
    assert store.pop("i5") == items[5] and store.get("i5") is None and len(store) == 19
    assert store.pop("i5") is None and store.pop("never") is None and len(store) == 19
    assert store.get("never") is None
    store.close()


def test_a_reopened_store_is_empty_and_fills_again(tmp_path):
    store = _store(tmp_path)
    store["i1"] = Item("i1", "leaf")
    store.close()
    again = _store(tmp_path)
    assert len(again) == 0 and again.get("i1") is None  # a cache of the topic: the mirror refills it
    again["i2"] = Item("i2", "leaf")
    assert again.get("i2") == Item("i2", "leaf") and len(again) == 1
    again.close()


def test_a_second_opener_of_a_folder_in_use_fails_without_wiping_it(tmp_path):
    store = _store(tmp_path)
    store["i1"] = Item("i1", "leaf")
    with pytest.raises(Exception, match="lock"):
        _store(tmp_path).get("i1")
    assert store.get("i1") == Item("i1", "leaf") and len(store) == 1
    store.close()


def test_mirror_over_rocksdb_keeps_latest_values_deletes_on_tombstones_and_skips_bad_records(tmp_path):
    cfg = load_config("test", env={})
    values = _store(tmp_path, cache_size=1)
    mirror = TopicMirror(cfg.kafka, "items", decode_item, name="unit-disk-catalogue", values=values)
    assert mirror._apply(_record(b"i1", encode_item(Item("i1", "old")))) == ""
    assert mirror._apply(_record(b"i2", encode_item(Item("i2", "leaf")), 1)) == ""
    assert mirror._apply(_record(b"i1", encode_item(Item("i1", "new")), 2)) == ""
    assert mirror._apply(_record(b"i1", b"\x0a\xff\xff", 3))  # undecodable: skipped, i1 keeps "new"
    assert mirror._apply(_record(None, encode_item(Item("i3")), 4))  # no key: skipped
    assert mirror._apply(_record(b"i2", None, 5)) == ""  # tombstone
    assert mirror.get("i1") == Item("i1", "new") and mirror.get("i2") is None and mirror.get("i3") is None
    assert len(mirror.values) == 1 and mirror.bad_records == 2
    values.close()


def test_worker_catalogue_store_follows_the_config(tmp_path):
    cfg = apply_overrides(load_config("test", env={}), {"stream.data_dir": str(tmp_path)})
    values = catalogue_values(cfg)
    assert isinstance(values, DiskValues) and values.path.is_relative_to(tmp_path)
    assert catalogue_values(apply_overrides(cfg, {"stream.catalogue_store": "memory"})) == {}
    with pytest.raises(Exception, match="catalogue_store"):
        apply_overrides(cfg, {"stream.catalogue_store": "redis"})


def test_decoded_values_kept_stay_within_the_cache_size_and_a_used_one_survives(tmp_path):
    store = _store(tmp_path, cache_size=4)
    for n in range(100):
        store[f"i{n}"] = Item(f"i{n}")
    for n in range(100):
        assert store.get(f"i{n}") == Item(f"i{n}")
        assert store.get("i0") == Item("i0")  # used between every other lookup
        assert len(store._recent) + len(store._older) <= 4
    assert "i0" in store._recent or "i0" in store._older
    store.close()
