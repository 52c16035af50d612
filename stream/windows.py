"""Per-user behaviour windows: the short-term session, the long-term clicks and the unclicked items.

One implementation serves the Faust worker (one event at a time, state kept as bytes), the offline
trainer (a loop over a sorted log) and `xdm stats`; everything here is plain data and plain functions.

Rules (fields of `WindowRules`):
- Short-term session (SDM [25], the base DSR of SRU2B §3.3): the user's latest session. Clicks sorted by
  time are cut into sessions where the gap between two clicks exceeds `session_gap_ms`, and a session is
  also closed when it would exceed `session_max` clicks, counted from its first click. The latest
  session is the short-term window even when it ended long before the snapshot time.
- Long-term: the clicks before the session that lie in [session start − `long_term_ms`, session start),
  newest `long_term_max` kept.
- Unclicked (§4.1 rules 1–2): at time t, items impressed at least `unclicked_min_exposures` times
  within [t − `unclicked_ms`, t] and not clicked within that span; newest `unclicked_max` by latest
  impression, each carrying that impression's time and side info.

Arrival order. Impressions and clicks arrive on different topics, so events come out of order. The
state keeps clicks and impressions sorted by (time, item) and derives every window at snapshot time,
so the windows depend only on the set of events applied, not on their order.

Lateness. Each user has a watermark: the largest event time applied minus `lateness_ms`. An event
older than the watermark is refused with `Outcome.TOO_LATE` and changes nothing; the caller counts
it. Within the lateness any order gives the same windows.

Redelivery. Delivery is at least once, so an event id already applied returns `Outcome.DUPLICATE`
and changes nothing. Ids are remembered only while their event time is at or after the watermark
(older redeliveries are refused as too late anyway, and are reported as such), at most
`dedup_max` of them.

Pruning. A snapshot is only ever needed at or after the earliest of the watermark and the oldest
pending sample anchor (`UserState.pending`, owned by `stream.samples`). Every `prune_every_ms` of
watermark progress the state drops impressions and clicks that no snapshot from then on can use.
Clicks are only cut at a session start, so the length rule still counts from the right click.
`snapshot` is exact for times at or after that bound; earlier times may see pruned data.
"""

from __future__ import annotations

import enum
import functools
from bisect import bisect_left, insort
from collections import Counter
from dataclasses import dataclass, field
from operator import itemgetter

from xdm.records import Event, Item
from xdm.stream_rules import WindowRules
from xdm.time_units import DAY_MS

# A stored behaviour is (ts_ms, item key), the key being the item's five fields joined by FIELD_SEP.
# One string per item, shared by all its rows, is far cheaper to hash, encode and decode than five
# strings or a dataclass (the codec runs on every event), and the tuples sort by time then item, which
# makes ties deterministic.
FIELD_SEP = "\x1f"  # ASCII unit separator; ids and side info must not contain it
Row = tuple[int, str]
NO_EVENTS = -(2**63)  # max_ts of a user with no events yet (fits the codec's int64)
_second = itemgetter(1)


class BadEvent(ValueError):
    """An event that cannot be applied: unknown kind, or an item or user that does not match it."""


class Outcome(enum.Enum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"  # event id already applied: nothing changed
    TOO_LATE = "too_late"  # older than the user's watermark: dropped, nothing changed


@dataclass(frozen=True, slots=True)
class Behavior:
    ts_ms: int  # event time of the click, or of the latest impression for an unclicked item
    item: Item


@dataclass(frozen=True, slots=True)
class Windows:
    short: tuple[Behavior, ...]  # latest session, oldest first
    long: tuple[Behavior, ...]  # long-term clicks, oldest first
    unclicked: tuple[Behavior, ...]  # unclicked items, oldest latest-impression first


@dataclass(slots=True)
class UserState:
    """Everything kept for one user; `stream.state_codec` turns it into bytes and back."""

    user_id: str = ""  # taken from the first event applied
    max_ts: int = NO_EVENTS  # largest event time applied (ms)
    next_prune_ms: int = NO_EVENTS  # prune again once the watermark reaches this (ms)
    clicks: list[Row] = field(default_factory=list)  # sorted
    impressions: list[Row] = field(default_factory=list)  # sorted
    seen: dict[str, int] = field(default_factory=dict)  # event id -> event time, in arrival order
    pending: list[tuple[int, str]] = field(default_factory=list)  # sample anchors (ts, event id), sorted


def item_key(item: Item) -> str:
    key = FIELD_SEP.join((item.item_id, item.leaf_cat, item.top_cat, item.brand, item.shop))
    if key.count(FIELD_SEP) != 4:
        raise BadEvent(f"item {item.item_id!r} has U+001F in its id or side info; strip it where the item is read")
    return key


def watermark(state: UserState, rules: WindowRules) -> int:
    """Events older than this (ms) are refused as too late."""
    return state.max_ts - rules.lateness_ms


def apply_event(state: UserState, event: Event, item: Item, rules: WindowRules) -> Outcome:
    """Add one impression or click; idempotent per event id, order-free within the lateness."""
    if event.event_id in state.seen:
        return Outcome.DUPLICATE
    ts = event.ts_ms
    if ts < state.max_ts - rules.lateness_ms:
        return Outcome.TOO_LATE
    if event.kind == "click":
        rows = state.clicks
    elif event.kind == "impression":
        rows = state.impressions
    else:
        raise BadEvent(f"event {event.event_id!r} has kind {event.kind!r}; expected 'impression' or 'click'")
    if item.item_id != event.item_id or (state.user_id and event.user_id != state.user_id):
        raise BadEvent(f"event {event.event_id!r} (user {event.user_id!r}, item {event.item_id!r}) was given "
                       f"user {state.user_id!r}'s state and item {item.item_id!r}; key state and items by the event")
    key = item_key(item)
    state.user_id = event.user_id
    insort(rows, (ts, key))
    state.seen[event.event_id] = ts
    if ts > state.max_ts:
        state.max_ts = ts
        _forget_old_ids(state, ts - rules.lateness_ms)
        if ts - rules.lateness_ms >= state.next_prune_ms:
            prune(state, rules)
    if len(state.seen) > rules.dedup_max:
        del state.seen[next(iter(state.seen))]
    return Outcome.APPLIED


def _forget_old_ids(state: UserState, mark: int) -> None:
    # Arrival order is close to time order, so stale ids sit at the front; any left behind a newer
    # one are only kept a little longer, which is harmless.
    seen = state.seen
    while seen:
        first = next(iter(seen))
        if seen[first] >= mark:
            return
        del seen[first]


# The three windows as stored rows (short, long, unclicked): plain tuples of ints and strings, which the
# garbage collector stops tracking, so a cache of many users' windows costs no full-collection time.
WindowRows = tuple[tuple[Row, ...], tuple[Row, ...], tuple[Row, ...]]


def snapshot(state: UserState, at_ms: int, rules: WindowRules) -> Windows:
    """The windows at time `at_ms`, from the events with ts <= at_ms."""
    return windows_of(snapshot_rows(state, at_ms, rules))


def snapshot_rows(state: UserState, at_ms: int, rules: WindowRules) -> WindowRows:
    """`snapshot` as stored rows: what a long-lived cache should keep (see WindowRows)."""
    clicks = state.clicks
    end = bisect_left(clicks, (at_ms + 1,))
    if end:
        start = session_start(clicks, end - 1, rules)
        short, long = tuple(clicks[start:end]), tuple(clicks[_long_term_start(clicks, start, rules):start])
    else:
        short = long = ()
    return short, long, tuple(_unclicked_rows(state, at_ms, rules))


def windows_of(rows: WindowRows) -> Windows:
    short, long, unclicked = rows
    return Windows(behaviors(short), behaviors(long), behaviors(unclicked))


def rows_of(windows: Windows) -> WindowRows:
    """The inverse of windows_of: Behavior records back to stored rows."""
    return tuple(tuple((b.ts_ms, item_key(b.item)) for b in w)  # type: ignore[return-value]
                 for w in (windows.short, windows.long, windows.unclicked))


def session_start(clicks: list[Row], last: int, rules: WindowRules) -> int:
    """Index of the first click of the session holding clicks[last] (clicks[0] starts a session)."""
    run = last
    gap = rules.session_gap_ms
    while run > 0 and clicks[run][0] - clicks[run - 1][0] <= gap:
        run -= 1
    # Within a run without long gaps, sessions are consecutive blocks of session_max clicks.
    return run + (last - run) // rules.session_max * rules.session_max


def _long_term_start(clicks: list[Row], start: int, rules: WindowRules) -> int:
    """Index of the oldest long-term click for the session starting at clicks[start]."""
    since = bisect_left(clicks, (clicks[start][0] - rules.long_term_ms,))
    return max(since, start - rules.long_term_max, 0)


def _unclicked_rows(state: UserState, at_ms: int, rules: WindowRules) -> list[Row]:
    since = at_ms - rules.unclicked_ms
    impressions = state.impressions[bisect_left(state.impressions, (since,)):
                                     bisect_left(state.impressions, (at_ms + 1,))]
    if not impressions:
        return []
    # Every read runs this over days of impressions, so it counts item *keys* with C-level tools and
    # only then maps keys to item ids (an item has one key unless its side info changed meanwhile).
    keys = list(map(_second, impressions))
    latest = dict(zip(keys, impressions))  # rows are sorted, so the last one per key wins
    counts = Counter(keys)
    distinct = list(latest)
    item_ids = item_ids_of(distinct)
    if len(set(item_ids)) != len(item_ids):
        distinct, item_ids, counts, latest = _merge_keys_of_an_item(distinct, item_ids, counts, latest)
    clicks = state.clicks
    recent_clicks = clicks[bisect_left(clicks, (since,)):bisect_left(clicks, (at_ms + 1,))]
    clicked = set(item_ids_of(list(set(map(_second, recent_clicks)))))
    need = rules.unclicked_min_exposures
    rows = [latest[key] for key, item_id in zip(distinct, item_ids) if counts[key] >= need and item_id not in clicked]
    rows.sort()
    return rows[-rules.unclicked_max:] if rules.unclicked_max > 0 else []


def item_ids_of(keys: list[str]) -> list[str]:
    """The item id of each item key (every key has exactly five fields, see item_key)."""
    return FIELD_SEP.join(keys).split(FIELD_SEP)[::5] if keys else []


def _merge_keys_of_an_item(distinct: list[str], item_ids: list[str], counts: Counter,
                           latest: dict[str, Row]) -> tuple[list[str], list[str], Counter, dict[str, Row]]:
    """Count exposures per item id when an item was impressed under several keys."""
    merged_counts: Counter = Counter()
    merged_latest: dict[str, Row] = {}
    for key, item_id in zip(distinct, item_ids):
        merged_counts[item_id] += counts[key]
        row = latest[key]
        if item_id not in merged_latest or row > merged_latest[item_id]:
            merged_latest[item_id] = row
    ids = list(merged_latest)
    return ids, ids, merged_counts, merged_latest


def behaviors(rows: list[Row] | tuple[Row, ...]) -> tuple[Behavior, ...]:
    """Stored rows as the Behavior records that leave this module."""
    return tuple([Behavior(ts, item_of(key)) for ts, key in rows])


@functools.lru_cache(maxsize=1 << 16)
def item_of(key: str) -> Item:
    # Building a frozen dataclass costs about a microsecond and a sample holds ~100 items, mostly the
    # same ones as the user's previous sample; Items are immutable, so they are shared.
    return Item(*key.split(FIELD_SEP))


def prune(state: UserState, rules: WindowRules) -> None:
    """Drop what no snapshot at or after the watermark or the oldest pending anchor can use."""
    mark = state.max_ts - rules.lateness_ms
    state.next_prune_ms = mark + rules.prune_every_ms
    earliest = min(mark, state.pending[0][0]) if state.pending else mark
    del state.impressions[:bisect_left(state.impressions, (earliest - rules.unclicked_ms,))]
    del state.clicks[:_first_needed_click(state.clicks, earliest, rules)]


def _first_needed_click(clicks: list[Row], earliest: int, rules: WindowRules) -> int:
    last = bisect_left(clicks, (earliest + 1,)) - 1
    if last < 0:
        return 0
    # Later snapshots have a session starting at or after this one, so their long-term window begins
    # no earlier than this one's; the unclicked rule needs the clicks of its own span.
    needed = min(_long_term_start(clicks, session_start(clicks, last, rules), rules),
                 bisect_left(clicks, (earliest - rules.unclicked_ms,)))
    # Cut only at a session start so the length rule keeps counting from the same click.
    return session_start(clicks, needed, rules) if needed > 0 else 0
