"""Plain records that cross package boundaries (log files, stream, learner, serving).

Ids are strings everywhere outside the model: real logs carry opaque ids, and the learner maps them to
embedding rows itself. An empty side-info string means "unknown" (an item not yet in the catalogue).
"""

from __future__ import annotations

from dataclasses import dataclass, field

EVENT_KINDS: tuple[str, ...] = ("impression", "click")
UNKNOWN = ""


@dataclass(frozen=True, slots=True)
class Event:
    """One user-item interaction in event time."""

    event_id: str  # unique per event; redeliveries carry the same id (idempotent updates)
    ts_ms: int  # event time, milliseconds since the Unix epoch
    user_id: str
    item_id: str
    kind: str  # "impression" or "click"
    request_id: str = ""  # the feed request that showed the item, if known
    position: int = -1  # slot in that request's result list, -1 if unknown


@dataclass(frozen=True, slots=True)
class Item:
    """Catalogue record: an item and its side-info hierarchy (papers' set F)."""

    item_id: str
    leaf_cat: str = UNKNOWN
    top_cat: str = UNKNOWN
    brand: str = UNKNOWN
    shop: str = UNKNOWN


@dataclass(frozen=True, slots=True)
class UserProfile:
    """Optional categorical user features (the papers' e_u inputs)."""

    user_id: str
    fields: tuple[tuple[str, str], ...] = field(default_factory=tuple)  # sorted (name, value) pairs

    def as_dict(self) -> dict[str, str]:
        return dict(self.fields)
