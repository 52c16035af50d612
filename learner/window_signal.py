"""Does a log's unclicked window say anything about the next clicks that the clicks do not?

A plug-in that reads the unclicked window (XDM's n, eqs. 3-8) can only gain where the window carries a
signal, and should cost nothing where it does not (#28). This measures the signal with no model to
train, so a world (or a user's own log) can be placed on that axis before any model is compared on it:
one heuristic recommender scored twice on the same users, blind to what the window holds and reading it.

The heuristic is a leaf mixture: the next click's leaf category is drawn as the click history's leaves
are (each leaf's share of the short- and long-term clicks), the item inside the leaf by how often it
was a training label; the top `TOP_N` by that product, filled up with the most popular items. Each
leaf's weight is divided by 1 + its skips since the user's last click on it: a leaf the feed kept
showing after the user stopped clicking it (the papers' shoes case, SRU2B §5.5). Reading the window,
the skips are counted in it; blind to it, they are expected from how many skips came after that last
click at the leaf's share of every scored user's window (its population rate). Both readings thus
discount old leaves alike (any window, even noise, holds more skips after an old click than after a
fresh one), and only which leaves the user skipped tells them apart. No setting is fitted, so no
reading is tuned to a world.

The paired lift of reading over blind, with its 95 % interval over users, is the window's signal:
above 0 where skips mark interests the user has lost, ~0 where the window is noise
(`FeedConfig.unclicked_noise`), below 0 where the skipped leaves are still wanted. (Subtracting leaf
shares, eq. 6's z = h - n at the level of leaves as `replay.stats`' leaf hit does, found no HR@50
signal on the default world's behaviour: a live interest is skipped often too, at a CTR of a few per
cent; what marks a lost one is skips after the clicks stopped. Counting skips without the blind
reading's expectation credited a noise window with up to +11 % HR@50, all of it recency.)

It is measured on the validation split by default (`Split.validation`): placing a world on the axis
must not read the test days that the models are later compared on.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from learner.data import OfflineData
from learner.evaluation_stats import DEFAULT_BOOT
from learner.offline import (compare, evaluation_result, metric_key, metric_keys, record_metrics,
                             training_label_counts)
from stream.windows import Behavior

TOP_N = 50  # items the heuristic recommends (HR@50, the papers' headline cutoff)
BLIND, READING = "blind", "reading"  # the heuristic blind to which leaves the window holds, and reading them
READS = (BLIND, READING)


def leaf_weights(history: tuple[Behavior, ...], unclicked: tuple[Behavior, ...],
                 leaf_rate: Mapping[str, float] | None = None) -> dict[str, float]:
    """How likely the next click falls in each leaf of the click history: its share of the clicks divided
    by 1 + its skips since the user's last click on it, counted in `unclicked` (reading the window) or,
    given `leaf_rate`, expected from the number of skips since then at those rates (blind to the leaves)."""
    clicks = Counter(b.item.leaf_cat for b in history if b.item.leaf_cat)
    total = sum(clicks.values())
    last_click: dict[str, int] = {}
    for b in history:
        last_click[b.item.leaf_cat] = max(last_click.get(b.item.leaf_cat, b.ts_ms), b.ts_ms)
    weights = {}
    for leaf, n in clicks.items():
        since = [b for b in unclicked if b.ts_ms > last_click[leaf]]
        if leaf_rate is None:
            skips = float(sum(b.item.leaf_cat == leaf for b in since))
        else:
            skips = len(since) * leaf_rate.get(leaf, 0.0)
        weights[leaf] = n / total / (1.0 + skips)
    return weights


def population_leaf_rate(windows: Iterable[tuple[Behavior, ...]]) -> dict[str, float]:
    """Each leaf's share of all the given unclicked windows' behaviours (items without a leaf count too)."""
    counts = Counter(b.item.leaf_cat for window in windows for b in window)
    total = sum(counts.values())
    return {leaf: n / total for leaf, n in counts.items()} if total else {}


class LeafMixture:
    """The heuristic: leaf weights times the item's share of its leaf's training labels, top-N."""

    def __init__(self, data: OfflineData, top_n: int = TOP_N) -> None:
        counts = training_label_counts(data)
        leaf_of = {item.item_id: item.leaf_cat for item in data.items}
        by_leaf: dict[str, list[tuple[str, int]]] = defaultdict(list)
        for item_id, n in counts.items():
            by_leaf[leaf_of.get(item_id, "")].append((item_id, n))
        self.top_n = top_n
        self.leaf_total = {leaf: sum(n for _, n in rows) for leaf, rows in by_leaf.items()}
        # a leaf's top_n items are all it can place in a top_n list
        self.leaf_top = {leaf: sorted(rows, key=lambda r: (-r[1], r[0]))[:top_n] for leaf, rows in by_leaf.items()}
        self.popular = [item_id for item_id, _ in sorted(counts.items(), key=lambda r: (-r[1], r[0]))[:top_n]]

    def rank(self, weights: dict[str, float]) -> list[str]:
        scored = [(-w * n / self.leaf_total[leaf], item_id)
                  for leaf, w in weights.items() if leaf in self.leaf_top
                  for item_id, n in self.leaf_top[leaf]]
        ranked = [item_id for _, item_id in sorted(scored)[: self.top_n]]
        if len(ranked) < self.top_n:
            chosen = set(ranked)
            ranked += [i for i in self.popular if i not in chosen][: self.top_n - len(ranked)]
        return ranked


def window_signal(data: OfflineData, n_boot: int = DEFAULT_BOOT, seed: int = 0) -> dict[str, Any]:
    """Both readings of the heuristic on `data`'s test users (validation users of a validation split) and
    the paired lift of reading the window; what `xdm stats --window-signal` prints."""
    heuristic = LeafMixture(data)
    samples = [data.test[u] for u in range(len(data.test))]
    rate = population_leaf_rate(s.windows.unclicked for s in samples)
    per_user: dict[str, dict[str, list[float]]] = {read: {k: [] for k in metric_keys()} for read in READS}
    for u, sample in enumerate(samples):
        history, unclicked = sample.windows.short + sample.windows.long, sample.windows.unclicked
        labels = data.test.label_items(u)
        record_metrics(per_user[BLIND], heuristic.rank(leaf_weights(history, unclicked, rate)), labels)
        record_metrics(per_user[READING], heuristic.rank(leaf_weights(history, unclicked)), labels)
    evals = {read: evaluation_result(None, read, data, values, n_boot, seed) for read, values in per_user.items()}
    keys = [metric_key(m, TOP_N) for m in ("hr", "mrr")]
    lift = compare(evals[BLIND], evals[READING], n_boot, seed)["lift"]
    return {"data": data.summary(), "heuristic": "leaf mixture", "top_n": TOP_N,
            "summary": {read: {k: e["summary"][k] for k in keys} for read, e in evals.items()},
            "lift": {k: lift[k] for k in keys},
            "mean_unclicked": round(data.test.mean_length("unclicked"), 2)}


def format_window_signal(report: dict[str, Any]) -> str:
    """Plain text: the heuristic's HR@50 / MRR@50 blind to the window and reading it, and the lift."""
    d = report["data"]
    where = ("validation users (the test period held out unread)" if d.get("holdout_days") else "test users")
    lines = [f"unclicked-window signal: {report['heuristic']} heuristic, top {report['top_n']}, "
             f"{d['test_users']:,} {where}; mean unclicked window {report['mean_unclicked']:.1f}"]
    for key, lift in report["lift"].items():
        blind, reading = (report["summary"][read][key]["mean"] for read in READS)
        mark = "*" if lift["low"] > 0 or lift["high"] < 0 else " "
        lines.append(f"  {key:<8} blind {blind:.4f}  reading the window {reading:.4f}  lift {lift['lift']:+.2%}"
                     f"{mark} [{lift['low']:+.2%}, {lift['high']:+.2%}]")
    lines.append("  * the 95 % interval (paired bootstrap over users) excludes 0")
    return "\n".join(lines)
