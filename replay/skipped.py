"""Responsiveness in a replay: what an arm does with the items a user was just shown and skipped.

No anchor reports it (docs/experiments/plugin-protocol.md, "Responsiveness"). For each scored request,
the items the user was shown k times without clicking them within the unclicked span before the request
(windows.unclicked_ms, the stream's own span) are grouped by k: exactly 2, exactly 3, and 5 or more
(4 is left out, as declared, so the groups stay apart). Per group the request records how many such items
there were, the share of them in the arm's top-50 answer, and the share of the top-50 answer whose leaf
category is one of their leaves. Observational, not a counterfactual: the items a user skipped are not
random, and every arm answers the same requests when the replay is paired.

The index sees the log's events in the order the replayer sends them, so a request scored before its
slice is sent sees the same past the live system does.
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass

from xdm.records import Event, Item

GROUPS = {"k2": (2, 2), "k3": (3, 3), "k5p": (5, None)}  # name -> (fewest, most) skips; None: no upper bound
TOP = 50


@dataclass(frozen=True)
class SkipFigures:
    """One request's figures for one group; the shares are None when the group is empty."""

    items: int
    in_top50: float | None
    leaf_share50: float | None


class SkipIndex:
    """Each user's impressions and clicks within the span before their newest event, in arrival order."""

    def __init__(self, span_ms: int, catalogue: dict[str, Item]) -> None:
        self.span_ms = span_ms
        self.catalogue = catalogue
        self._events: dict[str, deque[tuple[int, str, bool]]] = defaultdict(deque)  # (ts, item, clicked)

    def add(self, event: Event) -> None:
        kept = self._events[event.user_id]
        kept.append((event.ts_ms, event.item_id, event.kind == "click"))
        horizon = event.ts_ms - self.span_ms
        while kept and kept[0][0] < horizon:
            kept.popleft()

    def skips(self, user_id: str, ts_ms: int) -> dict[str, int]:
        """Item -> impressions in [ts - span, ts) of items the user did not click in that span."""
        shown: dict[str, int] = defaultdict(int)
        clicked: set[str] = set()
        for ts, item, is_click in self._events.get(user_id, ()):
            if ts < ts_ms - self.span_ms or ts >= ts_ms:
                continue
            if is_click:
                clicked.add(item)
            else:
                shown[item] += 1
        return {item: n for item, n in shown.items() if item not in clicked}

    def figures(self, user_id: str, ts_ms: int, ranked: list[str]) -> dict[str, SkipFigures]:
        """Per group: the skipped items, their share in `ranked`'s top-50 and the top-50's share in their leaves."""
        skips = self.skips(user_id, ts_ms)
        top = ranked[:TOP]
        out = {}
        for name, (low, high) in GROUPS.items():
            items = {i for i, n in skips.items() if n >= low and (high is None or n <= high)}
            if not items:
                out[name] = SkipFigures(0, None, None)
                continue
            leaves = {self._leaf(i) for i in items}
            in_top = sum(i in items for i in top) / len(items)
            leaf_share = sum(self._leaf(i) in leaves for i in top) / len(top) if top else 0.0
            out[name] = SkipFigures(len(items), in_top, leaf_share)
        return out

    def _leaf(self, item_id: str) -> str:
        item = self.catalogue.get(item_id)
        return item.leaf_cat if item is not None else f"unknown:{item_id}"  # an unknown item is its own leaf


def flat_fields(figures: dict[str, SkipFigures]) -> dict[str, float | int | None]:
    """The figures as scores.jsonl columns: skip_<group>_items, skip_<group>_in50, skip_<group>_leaf50."""
    out: dict[str, float | int | None] = {}
    for name, f in figures.items():
        out[f"skip_{name}_items"] = f.items
        out[f"skip_{name}_in50"] = f.in_top50
        out[f"skip_{name}_leaf50"] = f.leaf_share50
    return out


REPORTED = tuple(f"skip_{name}_{what}" for name in GROUPS for what in ("in50", "leaf50"))
