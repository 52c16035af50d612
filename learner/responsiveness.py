"""Responsiveness: after an item is shown and skipped k times, how far do it and its leaf fall in the user's
next top-50? No anchor reports it (#28; declared in docs/experiments/plugin-protocol.md).

For each user's sample (the protocol: validation users, windows at their validation anchor; labels never
read), the target item i is the model's top-1 for the windows as they are. The user's stream state is
rebuilt from those windows (`state_of`), k more impressions of i without a click are applied through the
stream's own rules (`stream.samples.step`), one a minute after the anchor, and the unclicked window is
taken again at the last of them (`stream.windows.snapshot`). With `unclicked_min_exposures` 2, k = 1
enters no window: the check that nothing moves. The short and long windows and the sample time stay as
they were (no click happened, and no timestamp reaches the model), so only what the unclicked module
reads can move the ranking: a row without the plug-in stays at exactly 0, the reference.
The window holds an item once whatever its number of impressions, so every k at or above the exposure
rule gives the same window: k counts up to the rule, not beyond it. An item the user clicked within the
unclicked span never enters (§4.1 rule 1), whatever k.

Per k and user: i's rank in the new top-50 (`OUT_RANK` = 51 when it left), whether it left, and the relative
change in the number of top-50 items from i's leaf (before, i itself is one of them, so never 0). Means
with 95 % percentile-bootstrap intervals over users (learner/evaluation_stats.py), and the median rank.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from learner.batch import collate
from learner.evaluation_stats import DEFAULT_BOOT, bootstrap_ci
from learner.trainer import Trainer
from stream.samples import Sample, step
from stream.windows import UserState, item_key, snapshot
from xdm.records import Event, Item
from xdm.stream_rules import SampleRules, WindowRules

TOP_N = 50  # the papers' headline cutoff
OUT_RANK = TOP_N + 1  # the rank recorded for a target that left the top-N
DEFAULT_KS = (1, 2, 3, 5)  # the declared protocol's k
SKIP_GAP_MS = 60_000  # one impression a minute after the anchor (the protocol)
SCORE_BATCH = 256
MEASURES = ("rank_after", "left_top", "leaf_change", "in_window")


def state_of(sample: Sample, rules: WindowRules) -> UserState:
    """A stream state whose snapshot at the anchor gives the sample's windows back.

    The clicks are the short and long windows; each unclicked item is impressed `unclicked_min_exposures`
    times at its latest impression, the fewest that put it in the window. Impressions that never reached
    the window are not in the sample, so the k skips of `skipped` are counted from what the window shows.
    """
    need = max(rules.unclicked_min_exposures, 1)
    clicks = sorted((b.ts_ms, item_key(b.item)) for b in sample.windows.long + sample.windows.short)
    impressions = sorted((b.ts_ms, item_key(b.item)) for b in sample.windows.unclicked for _ in range(need))
    return UserState(user_id=sample.user_id, max_ts=sample.ts_ms, clicks=clicks, impressions=impressions)


def skipped(sample: Sample, item: Item, k: int, wrules: WindowRules, srules: SampleRules) -> Sample:
    """The sample after k more impressions of `item` without a click, one a minute after the anchor."""
    if k == 0:
        return sample
    state = state_of(sample, wrules)
    for j in range(1, k + 1):
        ts = sample.ts_ms + j * SKIP_GAP_MS
        event = Event(f"responsiveness-{sample.sample_id}-{j}", ts, sample.user_id, item.item_id, "impression")
        step(state, event, item, wrules, srules)
    unclicked = snapshot(state, sample.ts_ms + k * SKIP_GAP_MS, wrules).unclicked
    return replace(sample, windows=replace(sample.windows, unclicked=unclicked))


@torch.no_grad()
def top_items(trainer: Trainer, samples: Sequence[Sample], n: int = TOP_N) -> list[list[str]]:
    """Each sample's top-n item ids by a full sort over the model's items."""
    model, vocab = trainer.model, trainer.vocab
    model.eval()
    ranked: list[list[str]] = []
    for start in range(0, len(samples), SCORE_BATCH):
        batch = collate(samples[start:start + SCORE_BATCH], vocab, grow=False, count=False).to(trainer.device)
        scores = model.full_sort_predict(batch)
        top = torch.topk(scores, min(n, scores.shape[1] - 1), dim=1).indices.cpu().tolist()
        ranked += [[vocab.key("item", r) for r in rows] for rows in top]
    return ranked


def responsiveness(trainer: Trainer, samples: Sequence[Sample], items: Mapping[str, Item], ks: Iterable[int],
                   wrules: WindowRules, srules: SampleRules, n_boot: int = DEFAULT_BOOT, seed: int = 0,
                   progress: Callable[[Iterable[int]], Iterable[int]] = iter) -> dict[str, Any]:
    """Per k: the per-user measures (module docstring) and their means with bootstrap intervals."""
    ks = sorted(set(ks))
    if any(k < 0 for k in ks):
        raise ValueError(f"k counts impressions and must not be negative, got {ks}")
    before = top_items(trainer, samples)
    users = [u for u, top in enumerate(before) if top and top[0] in items]
    targets = [items[before[u][0]] for u in users]
    per_k: dict[int, dict[str, Any]] = {}
    for k in progress(ks):
        after_samples = [skipped(samples[u], item, k, wrules, srules) for u, item in zip(users, targets)]
        after = top_items(trainer, after_samples)
        values = _per_user(targets, [before[u] for u in users], after, after_samples, items)
        per_k[k] = {"summary": {m: bootstrap_ci(v, n_boot, seed=seed).as_dict() for m, v in values.items()},
                    "rank_median": float(np.median(values["rank_after"])), "per_user": values}
    return {"users": len(users), "skipped_users": len(samples) - len(users), "top_n": TOP_N, "ks": ks,
            "per_k": per_k}


def _per_user(targets: list[Item], before: list[list[str]], after: list[list[str]], after_samples: list[Sample],
              items: Mapping[str, Item]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {m: [] for m in MEASURES}
    for target, top_before, top_after, sample in zip(targets, before, after, after_samples):
        rank = top_after.index(target.item_id) + 1 if target.item_id in top_after else OUT_RANK
        leaf_before, leaf_after = (_leaf_count(top, target.leaf_cat, items) for top in (top_before, top_after))
        out["rank_after"].append(float(rank))
        out["left_top"].append(float(rank == OUT_RANK))
        out["leaf_change"].append(leaf_after / leaf_before - 1.0)
        out["in_window"].append(float(any(b.item.item_id == target.item_id for b in sample.windows.unclicked)))
    return out


def _leaf_count(top: list[str], leaf: str, items: Mapping[str, Item]) -> int:
    return sum(1 for item_id in top if item_id in items and items[item_id].leaf_cat == leaf)
