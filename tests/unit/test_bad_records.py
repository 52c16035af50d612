"""One bad record on a mirrored topic is counted and skipped: it never ends the reader, and it never
replaces the key's last good value (the catalogue, the profiles, the server's windows replica)."""

from __future__ import annotations

from aiokafka.structs import ConsumerRecord

from stream.dlq import reason_code
from stream.mirror import BAD_RECORDS, TopicMirror
from stream.reader import WindowsReader
from stream.state_codec import encode_state
from stream.windows import UserState, apply_event
from stream.wire import decode_item, encode_item
from xdm.config import load_config
from xdm.records import Event, Item

NOW = 1_800_000_000_000


def _record(key: bytes | None, value: bytes | None, offset: int = 0, topic: str = "t") -> ConsumerRecord:
    return ConsumerRecord(topic=topic, partition=0, offset=offset, timestamp=NOW, timestamp_type=0, key=key,
                          value=value, checksum=None, serialized_key_size=0, serialized_value_size=0, headers=())


def _bad(name: str) -> float:
    return BAD_RECORDS.labels(name)._value.get()


def test_catalogue_mirror_skips_records_without_key_or_undecodable_with_a_dead_letter_reason():
    cfg = load_config("test", env={})
    mirror = TopicMirror(cfg.kafka, "items", decode_item, name="unit-catalogue")
    before = _bad("unit-catalogue")
    good = encode_item(Item("i1", "leaf"))
    assert mirror._apply(_record(b"i1", good)) == ""
    no_key = mirror._apply(_record(None, good, 1))
    garbage = mirror._apply(_record(b"i1", b"\x0a\xff\xff", 2))  # a length past the end: not a protobuf
    no_id = mirror._apply(_record(b"i2", encode_item(Item("", "leaf")), 3))
    assert [reason_code(r) for r in (no_key, garbage, no_id)] == ["no_key", "not_protobuf", "missing_field"]
    assert mirror.get("i1") == Item("i1", "leaf") and mirror.get("i2") is None
    assert mirror.bad_records == 3 and _bad("unit-catalogue") - before == 3


def test_a_record_refused_by_on_update_is_not_stored():
    cfg = load_config("test", env={})
    mirror = TopicMirror(cfg.kafka, "t", bytes, name="unit-refused")

    def refuse(key: str, value: bytes | None) -> None:
        if value == b"poison":
            raise ValueError("cannot use this one")

    mirror.on_update = refuse
    assert mirror._apply(_record(b"k", b"good")) == ""
    assert mirror._apply(_record(b"k", b"poison", 1)) == "cannot use this one"
    assert mirror.get("k") == b"good"


def _state(*items: str) -> bytes:
    cfg = load_config("test", env={})
    state = UserState()
    for n, item in enumerate(items):
        apply_event(state, Event(f"e{n}", NOW + n, "u1", item, "click"), Item(item), cfg.windows)
    return encode_state(state)


def test_windows_replica_keeps_a_users_last_good_windows_past_a_record_of_an_unknown_format():
    """A newer worker's state format during a rolling upgrade: counted and refused, whether or not the
    user is being read, and the replica goes on with later records."""
    reader = WindowsReader(load_config("test", env={}))
    before = _bad("windows")
    assert reader.mirror._apply(_record(b"u1", _state("i1"))) == ""
    assert [b.item.item_id for b in reader.windows("u1").short] == ["i1"]  # now cached: records decode on arrival
    newer = bytes([7]) + _state("i1", "i2")[1:]
    assert "state format 7" in reader.mirror._apply(_record(b"u1", newer, 1))
    assert "state format 7" in reader.mirror._apply(_record(b"u2", newer, 2))  # not cached: refused all the same
    assert [b.item.item_id for b in reader.windows("u1").short] == ["i1"] and reader.windows("u2") is None
    assert reader.mirror._apply(_record(b"u1", _state("i1", "i3"), 3)) == ""
    assert [b.item.item_id for b in reader.windows("u1").short] == ["i1", "i3"]
    assert _bad("windows") - before == 2


def test_windows_replica_answers_a_user_whose_stored_state_is_corrupt_as_one_without_windows():
    reader = WindowsReader(load_config("test", env={}))
    good = _state("i1", "i2")
    assert reader.mirror._apply(_record(b"u1", good[:20])) == ""  # the format byte is right: taken on arrival
    before = _bad("windows")
    assert reader.rows("u1") is None and reader.rows("u1") is None
    assert _bad("windows") - before == 1  # decoded (and counted) once, until the user's next record
    reader.mirror._apply(_record(b"u1", good, 1))
    assert [b.item.item_id for b in reader.windows("u1").short] == ["i1", "i2"]
