"""Statistics of a plain-format log, measured from its files alone through the stream's window rules.

Every event goes through `stream.samples.step` with one `UserState` per user, exactly as the stream
worker would apply it, so the window lengths reported here are those the learner will see. Nothing
comes from a simulator's hidden state: a real exported log gets the same report.

Besides the papers' Table 1 quantities, two measures tell whether the unclicked window says something
about the next clicks (the labels) that the clicks do not:
- `label_overlap_long` / `label_overlap_unclicked`: the share of long-term clicks (resp. unclicked
  items) whose leaf category is among the labels' leaf categories. Unclicked items that mostly come
  from interests the user has lost (SRU2B §5.5) overlap far less than the long-term clicks.
- `leaf_hit_clicks` / `leaf_hit_minus_unclicked`: a category-level stand-in for SDM and XDM. Rank the
  leaf categories of the click history (short + long term) by their share of the clicks, or by that
  share minus their share of the unclicked window (eq. 6, z = h - n); the hit rate is how often one
  of the top `LEAF_HIT_TOP` is among the labels' leaves. The second beating the first means the
  unclicked window marks stale history that clicks alone cannot: what XDM is built to use.
- `label_brand_history` / `label_brand_unclicked`: the same question one level down, within a leaf.
  Of the label items whose leaf the click history (resp. the unclicked window) holds, the share whose
  brand is also among that window's brands of that leaf. A user who skips some brands of a category
  they still want (the papers' premise, and the simulator's `dislike_brands`) lowers the second: the
  next clicks avoid the brands that were shown and skipped. Compare logs by it, not with a fixed bar.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from stream.samples import Sample, flush, step
from stream.windows import Behavior, Outcome, UserState
from xdm.log_format import read_events, read_items
from xdm.records import Item
from xdm.stream_rules import SampleRules, WindowRules

LEAF_HIT_TOP = 2  # leaves a category-level stand-in recommends (see leaf_hit_* above)
# SRU2B Table 1 (Taobao, Tmall): the averages a calibrated log should come near.
PAPER_TABLE1: dict[str, tuple[float, float]] = {
    "avg_short": (13.49, 12.30),
    "avg_long": (20.87, 18.74),
    "avg_unclicked": (71.32, 64.26),
}


@dataclass(frozen=True)
class LogStats:
    users: int  # distinct users with at least one event
    items: int  # items in the catalogue
    items_seen: int  # distinct items in the events
    unknown_items: int  # distinct event items missing from the catalogue
    events: int
    impressions: int
    clicks: int
    duplicates: int  # events dropped as redeliveries of an event id
    too_late: int  # events dropped as older than the user's watermark
    samples: int  # training samples (a click with its next clicks as labels)
    avg_short: float  # mean short-term (session) clicks at sample time
    avg_long: float  # mean long-term clicks at sample time
    avg_unclicked: float  # mean unclicked items at sample time
    label_overlap_long: float  # share of long-term clicks whose leaf is among the labels' leaves
    label_overlap_unclicked: float  # the same for unclicked items
    leaf_hit_clicks: float  # top click-history leaves by click share hit a label leaf (see above)
    leaf_hit_minus_unclicked: float  # the same ranked by click share minus unclicked share
    label_brand_history: float  # labels whose leaf the history holds: share with a brand clicked in that leaf
    label_brand_unclicked: float  # the same for the unclicked window's brands in that leaf

    @property
    def ctr(self) -> float:
        return self.clicks / self.impressions if self.impressions else 0.0


@dataclass
class _Share:
    """Labels whose leaf a window holds (`of`), and how many of them have a brand it holds there (`hits`)."""

    of: int = 0
    hits: int = 0

    def add_labels(self, labels: tuple[Behavior, ...], brands: dict[str, set[str]]) -> None:
        for label in labels:
            leaf, brand = label.item.leaf_cat, label.item.brand
            if not brand or leaf not in brands:
                continue
            self.of += 1
            self.hits += brand in brands[leaf]

    @property
    def share(self) -> float:
        return _mean(self.hits, self.of)


@dataclass
class _Totals:
    samples: int = 0
    short: int = 0
    long: int = 0
    unclicked: int = 0
    long_hits: int = 0
    unclicked_hits: int = 0
    ranked: int = 0  # samples with a click history
    hits_clicks: int = 0
    hits_minus_unclicked: int = 0
    brand_history: _Share = field(default_factory=_Share)
    brand_unclicked: _Share = field(default_factory=_Share)

    def add(self, sample: Sample) -> None:
        w = sample.windows
        labels = {b.item.leaf_cat for b in sample.labels if b.item.leaf_cat}
        self.samples += 1
        self.short += len(w.short)
        self.long += len(w.long)
        self.unclicked += len(w.unclicked)
        self.long_hits += _in_leaves(w.long, labels)
        self.unclicked_hits += _in_leaves(w.unclicked, labels)
        by_clicks, by_difference = _rank_history_leaves(w.short + w.long, w.unclicked)
        if by_clicks:
            self.ranked += 1
            self.hits_clicks += not labels.isdisjoint(by_clicks[:LEAF_HIT_TOP])
            self.hits_minus_unclicked += not labels.isdisjoint(by_difference[:LEAF_HIT_TOP])
        self.brand_history.add_labels(sample.labels, _brands_by_leaf(w.short + w.long))
        self.brand_unclicked.add_labels(sample.labels, _brands_by_leaf(w.unclicked))


def _brands_by_leaf(window: tuple[Behavior, ...]) -> dict[str, set[str]]:
    brands: dict[str, set[str]] = defaultdict(set)
    for b in window:
        if b.item.leaf_cat and b.item.brand:
            brands[b.item.leaf_cat].add(b.item.brand)
    return brands


def _in_leaves(window: tuple[Behavior, ...], leaves: set[str]) -> int:
    return sum(1 for b in window if b.item.leaf_cat in leaves)


def _rank_history_leaves(
    history: tuple[Behavior, ...], unclicked: tuple[Behavior, ...]
) -> tuple[list[str], list[str]]:
    """Click-history leaves by click share, and by click share minus unclicked share (ties by name)."""
    clicked = Counter(b.item.leaf_cat for b in history if b.item.leaf_cat)
    shown = Counter(b.item.leaf_cat for b in unclicked if b.item.leaf_cat)
    n_clicked, n_shown = sum(clicked.values()), max(sum(shown.values()), 1)
    by_clicks = sorted(clicked, key=lambda leaf: (-clicked[leaf], leaf))
    by_difference = sorted(clicked, key=lambda leaf: (shown[leaf] / n_shown - clicked[leaf] / n_clicked, leaf))
    return by_clicks, by_difference


def log_stats(
    log_dir: str | Path, wrules: WindowRules | None = None, srules: SampleRules | None = None
) -> LogStats:
    """Replay the log in `log_dir` through the window and sample rules and summarise it."""
    wrules, srules = wrules or WindowRules(), srules or SampleRules()
    catalogue = read_items(log_dir)
    states: dict[str, UserState] = {}
    totals = _Totals()
    seen: set[str] = set()
    events = clicks = duplicates = too_late = 0
    for event in read_events(log_dir):
        events += 1
        clicks += event.kind == "click"
        seen.add(event.item_id)
        item = catalogue.get(event.item_id) or Item(event.item_id)
        state = states.get(event.user_id)
        if state is None:
            state = states[event.user_id] = UserState()
        result = step(state, event, item, wrules, srules)
        duplicates += result.outcome is Outcome.DUPLICATE
        too_late += result.outcome is Outcome.TOO_LATE
        for sample in result.samples:
            totals.add(sample)
    for state in states.values():
        for sample in flush(state, wrules, srules):
            totals.add(sample)
    return LogStats(
        users=len(states),
        items=len(catalogue),
        items_seen=len(seen),
        unknown_items=len(seen - catalogue.keys()),
        events=events,
        impressions=events - clicks,
        clicks=clicks,
        duplicates=duplicates,
        too_late=too_late,
        samples=totals.samples,
        avg_short=_mean(totals.short, totals.samples),
        avg_long=_mean(totals.long, totals.samples),
        avg_unclicked=_mean(totals.unclicked, totals.samples),
        label_overlap_long=_mean(totals.long_hits, totals.long),
        label_overlap_unclicked=_mean(totals.unclicked_hits, totals.unclicked),
        leaf_hit_clicks=_mean(totals.hits_clicks, totals.ranked),
        leaf_hit_minus_unclicked=_mean(totals.hits_minus_unclicked, totals.ranked),
        label_brand_history=totals.brand_history.share,
        label_brand_unclicked=totals.brand_unclicked.share,
    )


def _mean(total: int, count: int) -> float:
    return total / count if count else 0.0


def format_stats(stats: LogStats) -> str:
    """A plain-text table of the stats, with the papers' Table 1 values beside the window averages."""
    rows: list[tuple[str, str, str, str]] = [
        ("users", f"{stats.users:,}", "358,978", "446,464"),
        ("items (catalogue / seen)", f"{stats.items:,} / {stats.items_seen:,}", "1,078,723", "908,214"),
        ("events", f"{stats.events:,}", "", ""),
        ("impressions / clicks", f"{stats.impressions:,} / {stats.clicks:,}", "", ""),
        ("CTR", f"{stats.ctr:.2%}", "", ""),
        ("training samples", f"{stats.samples:,}", "1,041,094", "1,229,271"),
    ]
    for key, label in (("avg_short", "avg short-term clicked len"), ("avg_long", "avg long-term clicked len"),
                       ("avg_unclicked", "avg unclicked len")):
        taobao, tmall = PAPER_TABLE1[key]
        rows.append((label, f"{getattr(stats, key):.2f}", f"{taobao:.2f}", f"{tmall:.2f}"))
    rows.append(("label-leaf overlap: long / unclicked",
                 f"{stats.label_overlap_long:.2f} / {stats.label_overlap_unclicked:.2f}", "", ""))
    rows.append((f"leaf hit@{LEAF_HIT_TOP}: clicks / clicks - unclicked",
                 f"{stats.leaf_hit_clicks:.3f} / {stats.leaf_hit_minus_unclicked:.3f}", "", ""))
    rows.append(("label brand within leaf: history / unclicked",
                 f"{stats.label_brand_history:.3f} / {stats.label_brand_unclicked:.3f}", "", ""))
    if stats.unknown_items or stats.duplicates or stats.too_late:
        rows.append(("unknown items / duplicates / too late",
                     f"{stats.unknown_items:,} / {stats.duplicates:,} / {stats.too_late:,}", "", ""))
    header = ("", "this log", "Taobao", "Tmall")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths)))
             for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
