"""Offline train and test samples from a plain-format log, built by the stream's own window code.

The protocol follows SDM [25], which SRU2B §4.1 "directly followed":

- Cut time. The log's last `test_days` days (DEFAULT_TEST_DAYS = 2) are the test period:
  cut = t_end − test_days · 24 h, where t_end is one millisecond after the last event. (Real exports
  rarely start at midnight, so the cut is measured from the end of the log, not from calendar days.) SDM scored the last day; two days
  nearly double the test users of the simulated world (a user clicks on ~18 % of days), which narrows
  every interval by ~√2. `test_days=1` gives SDM's split.
- Training samples. Every event before the cut goes, in time order, through `stream.samples.step` with
  one `stream.windows.UserState` per user, exactly as the Faust worker applies it; at the cut each
  user's state is flushed (`stream.samples.flush`). The samples are therefore the stream's samples: a
  click anchors one, its windows are the snapshot at the anchor, its labels the next k = 5 clicks.
  Only pre-cut events ever enter a state, so every label of a training sample lies before the cut;
  anchors whose labels would need post-cut clicks are dropped, as the stream drops incomplete ones.
- Test samples. One per test user: a user with at least one event before the cut (cold-start users are
  out of scope: their windows would be empty) and at least one click after it. With the "cut" anchor
  (the default is "first_click", next item) the windows are the snapshot of the user's state at the
  cut (events with ts < cut); the labels are the user's first k = `samples.n_labels` clicks after the
  cut, in time order. A user with fewer than k post-cut clicks keeps the ones they have (at least one),
  so R@N divides by that user's own label count.
- Test anchor (`test_anchor`). "cut" (the test samples above, the protocol until 2026-12) takes every
  test user's windows at the cut, whenever they were last active. "first_click" (DEFAULT_TEST_ANCHOR)
  takes them as the stream's samples are taken: at the user's first click after the cut (that click
  ends the short-term session, as a training anchor does), with the next k clicks after it as labels, so
  a test user needs two post-cut clicks. At the cut a third of the users have been away for more than the
  3-day unclicked span and come with an empty unclicked window, which few training samples have; at a
  click they are present, as at every training anchor. The training samples are the same either way.
- Items missing from items.csv become `Item(item_id)` (unknown side info); profiles from users.csv are
  joined into `sample.profile`.
- Validation split. With `holdout_days` > 0 the log's last `holdout_days` are dropped before anything
  else, so a split of the remaining days can choose hyper-parameters (`xdm tune`, learner/tuning.py)
  without the test period ever being read: with holdout_days = test_days, the validation users are
  scored on the `test_days` just before the test period, and the models train on the days before those.

Which split to build (log, rules, test days, holdout days, test anchor, cache) is one `learner.split.Split`.

Samples are kept column-wise (`SampleTable`, int arrays of item indices and times) and rebuilt as
`stream.samples.Sample` records on access: 150 k samples with ~130 behaviours each would take gigabytes
as Python objects. The rebuilt samples are equal to the ones the stream code produced.
"""

from __future__ import annotations

import logging
import pickle
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from learner.split import OfflineDataError, Split, anchor_entry
from stream.samples import Sample, flush, sample_id, step
from stream.windows import Behavior, UserState, Windows, snapshot
from xdm.log_format import read_events, read_items, read_users
from xdm.progress import progress_bar
from xdm.records import Item
from xdm.stream_rules import SampleRules, WindowRules
from xdm.time_units import DAY_MS

log = logging.getLogger(__name__)

_KINDS = ("short", "long", "unclicked", "labels")


class SampleTable(Sequence[Sample]):
    """Samples stored as flat int arrays; `table[i]` rebuilds the i-th as a stream `Sample`."""

    def __init__(self, items: list[Item], profiles: dict[str, tuple[tuple[str, str], ...]]) -> None:
        self.items = items  # item index -> Item, shared with the other table of the split
        self.profiles = profiles
        self.sample_ids: list[str] = []
        self.user_ids: list[str] = []
        self.ts = array("q")
        self._ts = {kind: array("q") for kind in _KINDS}
        self._item = {kind: array("i") for kind in _KINDS}
        self._end = {kind: array("q") for kind in _KINDS}  # end offset of each sample in the flat arrays

    def __len__(self) -> int:
        return len(self.sample_ids)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        short, long_, unclicked, labels = (self._behaviors(kind, i) for kind in _KINDS)
        return Sample(self.sample_ids[i], self.user_ids[i], self.ts[i], Windows(short, long_, unclicked),
                      labels, self.profiles.get(self.user_ids[i], ()))

    def mean_length(self, kind: str) -> float:
        """Mean length over the samples of one window ('short', 'long', 'unclicked') or of the labels."""
        return len(self._ts[kind]) / len(self) if len(self) else 0.0

    def append(self, sample: Sample, item_index: dict[str, int]) -> None:
        self.sample_ids.append(sample.sample_id)
        self.user_ids.append(sample.user_id)
        self.ts.append(sample.ts_ms)
        w = sample.windows
        for kind, rows in zip(_KINDS, (w.short, w.long, w.unclicked, sample.labels)):
            self._ts[kind].extend(b.ts_ms for b in rows)
            self._item[kind].extend(item_index[b.item.item_id] for b in rows)
            self._end[kind].append(len(self._ts[kind]))

    def length(self, kind: str, i: int) -> int:
        """Behaviours in window `kind` (short, long, unclicked, labels) of sample i, without rebuilding it."""
        end = self._end[kind]
        return end[i] - (end[i - 1] if i else 0)

    def lengths_view(self) -> list[_LengthsOnly]:
        """Stand-ins exposing only window lengths, for `learner.batch.length_buckets` (no rebuilding)."""
        return [_LengthsOnly(_WindowLengths(*(range(self.length(k, i)) for k in _KINDS[:3])))
                for i in range(len(self))]

    def label_items(self, i: int) -> list[str]:
        """Item ids of sample i's labels, in time order."""
        lo, hi = self._span("labels", i)
        return [self.items[j].item_id for j in self._item["labels"][lo:hi]]

    def _span(self, kind: str, i: int) -> tuple[int, int]:
        end = self._end[kind]
        return (end[i - 1] if i else 0), end[i]

    def _behaviors(self, kind: str, i: int) -> tuple[Behavior, ...]:
        lo, hi = self._span(kind, i)
        items = self.items
        return tuple([Behavior(t, items[j]) for t, j in zip(self._ts[kind][lo:hi], self._item[kind][lo:hi])])


@dataclass(frozen=True, slots=True)
class _WindowLengths:
    short: range
    long: range
    unclicked: range


@dataclass(frozen=True, slots=True)
class _LengthsOnly:
    windows: _WindowLengths


@dataclass
class OfflineData:
    """One time split of a log, built: training samples before the cut, one test sample per test user."""

    split: Split  # what was built
    cut_ms: int  # test period starts here (ms); every training label lies before it
    end_ms: int  # one ms after the last event
    train: SampleTable
    test: SampleTable
    items: list[Item]  # every item of the catalogue and of the events, by item index
    stats: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, object]:
        s = self.split
        return {"data_dir": str(s.data_dir), "cut_ms": self.cut_ms, "end_ms": self.end_ms,
                "test_days": s.test_days, "holdout_days": s.holdout_days, **anchor_entry(s.test_anchor),
                "train_samples": len(self.train), "test_users": len(self.test), "items": len(self.items),
                **self.stats}


def build_offline_data(split: Split, progress: bool = True) -> OfflineData:
    """Train and test samples of `split` (protocol in the module docstring).

    With `split.cache_dir`, the built split is stored there under `split.cache_key()` and reused: building
    replays every event through the stream code (minutes).
    """
    cache = split.cache_path()
    if cache is not None and cache.exists():
        with open(cache, "rb") as handle:
            data = _as_built(pickle.load(handle), split)
        log.info("offline data from cache", extra={"cache": str(cache), "train": len(data.train),
                                                   "test": len(data.test)})
        return data
    data = _build(split, progress)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        with open(tmp, "wb") as handle:
            pickle.dump(data, handle, protocol=pickle.HIGHEST_PROTOCOL)
        tmp.replace(cache)
    return data


def _as_built(cached: Any, split: Split) -> OfflineData:
    """The cached samples as `split`'s (its key matched). Splits pickled before `Split` existed carry their
    settings as fields of their own instead of a `split`; the key guarantees they are the same."""
    return OfflineData(split, cached.cut_ms, cached.end_ms, cached.train, cached.test, cached.items, cached.stats)


def _build(split: Split, progress: bool) -> OfflineData:
    data_dir, wrules, srules = split.data_dir, split.windows, split.samples
    test_days, holdout_days, test_anchor = split.test_days, split.holdout_days, split.test_anchor
    started = time.monotonic()
    catalogue = read_items(data_dir)
    profiles = {u: p.fields for u, p in read_users(data_dir).items()}
    log_end_ms, n_events = _end_of_log(data_dir)
    end_ms = log_end_ms - int(holdout_days * DAY_MS)
    cut_ms = end_ms - int(test_days * DAY_MS)
    items: list[Item] = list(catalogue.values())
    item_index = {item.item_id: i for i, item in enumerate(items)}
    train, test = SampleTable(items, profiles), SampleTable(items, profiles)
    states: dict[str, UserState] = {}
    at_cut: dict[str, Windows] = {}
    anchors: dict[str, int] = {}  # test user -> time their windows were taken
    after: dict[str, list[Behavior]] = {}
    past_cut = False
    for event in progress_bar(read_events(data_dir), total=n_events, desc="replaying log", unit="ev",
                              show=progress, mininterval=2.0):
        if event.ts_ms >= end_ms:  # held out (validation split): never enters a state or a label
            continue
        item = catalogue.get(event.item_id)
        if item is None:
            item = catalogue[event.item_id] = Item(event.item_id)
            item_index[event.item_id] = len(items)
            items.append(item)
        if event.ts_ms < cut_ms:
            state = states.get(event.user_id)
            if state is None:
                state = states[event.user_id] = UserState()
            for sample in step(state, event, item, wrules, srules).samples:
                train.append(sample, item_index)
            continue
        if not past_cut:  # the first post-cut event: freeze every user at the cut
            past_cut = True
            at_cut = _close_at_cut(states, cut_ms, wrules, srules, train, item_index, keep=test_anchor != "cut")
            anchors = dict.fromkeys(at_cut, cut_ms) if test_anchor == "cut" else {}
        if event.user_id in states:  # "first_click": still looking for this user's anchor click
            step(states[event.user_id], event, item, wrules, srules)  # its samples lie past the cut: dropped
            if event.kind == "click":
                at_cut[event.user_id] = snapshot(states.pop(event.user_id), event.ts_ms, wrules)
                anchors[event.user_id] = event.ts_ms
            continue
        if event.kind == "click" and event.user_id in anchors:
            labels = after.setdefault(event.user_id, [])
            if len(labels) < srules.n_labels:
                labels.append(Behavior(event.ts_ms, item))
    if not past_cut:
        raise OfflineDataError(f"{data_dir}: no event at or after the cut; the log is empty or shorter than "
                               f"its test period ({test_days} days) plus {holdout_days} held-out days")
    for user_id in sorted(after):
        test.append(Sample(sample_id(user_id, f"test@{anchors[user_id]}"), user_id, anchors[user_id],
                           at_cut[user_id], tuple(after[user_id])), item_index)
    if not len(train):
        raise OfflineDataError(f"{data_dir}: no training sample before the cut; use a longer log or fewer "
                               f"--test-days")
    if not len(test):
        raise OfflineDataError(f"{data_dir}: no test user (a user active before the cut who clicks after it)")
    stats = {"build_s": round(time.monotonic() - started, 1), "events": n_events, "users_before_cut": len(at_cut)}
    log.info("offline data built", extra={"train": len(train), "test": len(test), **stats})
    return OfflineData(split, cut_ms, end_ms, train, test, items, stats)


def _close_at_cut(states: dict[str, UserState], cut_ms: int, wrules: WindowRules, srules: SampleRules,
                  train: SampleTable, item_index: dict[str, int], keep: bool = False) -> dict[str, Windows]:
    """Each user's windows at the cut, and the training samples the pre-cut clicks complete.

    `keep` leaves the flushed states in `states` to go on past the cut (the "first_click" anchor): a
    flush drops every pending anchor, so no training sample can take a post-cut label.
    """
    windows: dict[str, Windows] = {}
    for user_id, state in states.items():
        # The state's watermark is below the cut, so the snapshot is exact (stream/windows.py, Pruning).
        windows[user_id] = snapshot(state, cut_ms - 1, wrules)
        for sample in flush(state, wrules, srules):
            train.append(sample, item_index)
    if not keep:
        states.clear()  # no pre-cut event can follow: the log is sorted
    return windows


def _end_of_log(data_dir: Path) -> tuple[int, int]:
    """(last event time + 1 ms, number of events), from a first read of the events file."""
    last, count = -1, 0
    for event in read_events(data_dir):
        last = event.ts_ms
        count += 1
    if count == 0:
        raise OfflineDataError(f"{data_dir}: the events file has no rows")
    return last + 1, count
