from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_KIND_UNSPECIFIED: _ClassVar[EventKind]
    EVENT_KIND_IMPRESSION: _ClassVar[EventKind]
    EVENT_KIND_CLICK: _ClassVar[EventKind]
EVENT_KIND_UNSPECIFIED: EventKind
EVENT_KIND_IMPRESSION: EventKind
EVENT_KIND_CLICK: EventKind

class Event(_message.Message):
    __slots__ = ("event_id", "user_id", "item_id", "ts_ms", "request_id", "position", "kind")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TS_MS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    user_id: str
    item_id: str
    ts_ms: int
    request_id: str
    position: int
    kind: EventKind
    def __init__(self, event_id: _Optional[str] = ..., user_id: _Optional[str] = ..., item_id: _Optional[str] = ..., ts_ms: _Optional[int] = ..., request_id: _Optional[str] = ..., position: _Optional[int] = ..., kind: _Optional[_Union[EventKind, str]] = ...) -> None: ...

class Item(_message.Message):
    __slots__ = ("item_id", "leaf_cat", "top_cat", "brand", "shop")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    LEAF_CAT_FIELD_NUMBER: _ClassVar[int]
    TOP_CAT_FIELD_NUMBER: _ClassVar[int]
    BRAND_FIELD_NUMBER: _ClassVar[int]
    SHOP_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    leaf_cat: str
    top_cat: str
    brand: str
    shop: str
    def __init__(self, item_id: _Optional[str] = ..., leaf_cat: _Optional[str] = ..., top_cat: _Optional[str] = ..., brand: _Optional[str] = ..., shop: _Optional[str] = ...) -> None: ...

class UserProfile(_message.Message):
    __slots__ = ("user_id", "fields")
    class FieldsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    fields: _containers.ScalarMap[str, str]
    def __init__(self, user_id: _Optional[str] = ..., fields: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Behavior(_message.Message):
    __slots__ = ("ts_ms", "item")
    TS_MS_FIELD_NUMBER: _ClassVar[int]
    ITEM_FIELD_NUMBER: _ClassVar[int]
    ts_ms: int
    item: Item
    def __init__(self, ts_ms: _Optional[int] = ..., item: _Optional[_Union[Item, _Mapping]] = ...) -> None: ...

class Windows(_message.Message):
    __slots__ = ("short_term", "long_term", "unclicked")
    SHORT_TERM_FIELD_NUMBER: _ClassVar[int]
    LONG_TERM_FIELD_NUMBER: _ClassVar[int]
    UNCLICKED_FIELD_NUMBER: _ClassVar[int]
    short_term: _containers.RepeatedCompositeFieldContainer[Behavior]
    long_term: _containers.RepeatedCompositeFieldContainer[Behavior]
    unclicked: _containers.RepeatedCompositeFieldContainer[Behavior]
    def __init__(self, short_term: _Optional[_Iterable[_Union[Behavior, _Mapping]]] = ..., long_term: _Optional[_Iterable[_Union[Behavior, _Mapping]]] = ..., unclicked: _Optional[_Iterable[_Union[Behavior, _Mapping]]] = ...) -> None: ...

class Sample(_message.Message):
    __slots__ = ("sample_id", "user_id", "ts_ms", "windows", "labels", "profile", "emitted_ms", "source_ms")
    class ProfileEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SAMPLE_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    TS_MS_FIELD_NUMBER: _ClassVar[int]
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    EMITTED_MS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_MS_FIELD_NUMBER: _ClassVar[int]
    sample_id: str
    user_id: str
    ts_ms: int
    windows: Windows
    labels: _containers.RepeatedCompositeFieldContainer[Behavior]
    profile: _containers.ScalarMap[str, str]
    emitted_ms: int
    source_ms: int
    def __init__(self, sample_id: _Optional[str] = ..., user_id: _Optional[str] = ..., ts_ms: _Optional[int] = ..., windows: _Optional[_Union[Windows, _Mapping]] = ..., labels: _Optional[_Iterable[_Union[Behavior, _Mapping]]] = ..., profile: _Optional[_Mapping[str, str]] = ..., emitted_ms: _Optional[int] = ..., source_ms: _Optional[int] = ...) -> None: ...

class DeadLetter(_message.Message):
    __slots__ = ("source_topic", "partition", "offset", "reason", "payload", "at_ms")
    SOURCE_TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    source_topic: str
    partition: int
    offset: int
    reason: str
    payload: bytes
    at_ms: int
    def __init__(self, source_topic: _Optional[str] = ..., partition: _Optional[int] = ..., offset: _Optional[int] = ..., reason: _Optional[str] = ..., payload: _Optional[bytes] = ..., at_ms: _Optional[int] = ...) -> None: ...

class ModelVersion(_message.Message):
    __slots__ = ("arm", "version", "collection", "tower_uri", "published_ms", "trained_samples", "items")
    ARM_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    TOWER_URI_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_MS_FIELD_NUMBER: _ClassVar[int]
    TRAINED_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    arm: str
    version: int
    collection: str
    tower_uri: str
    published_ms: int
    trained_samples: int
    items: int
    def __init__(self, arm: _Optional[str] = ..., version: _Optional[int] = ..., collection: _Optional[str] = ..., tower_uri: _Optional[str] = ..., published_ms: _Optional[int] = ..., trained_samples: _Optional[int] = ..., items: _Optional[int] = ...) -> None: ...
