"""PopularItems keeps a bounded set of candidates, yet ranks a skewed click stream as exact decayed
counts over every item would."""

from __future__ import annotations

import itertools
import math
import random

from serving.popular import CANDIDATES, KEEP, PRUNE_SLACK, PopularItems
from xdm.config import load_config

HOUR_MS = 3_600_000
T0 = 1_800_000_000_000


def _popular(half_life_ms: int = HOUR_MS) -> PopularItems:
    return PopularItems(load_config("test", env={}, overrides={"serving.popular_half_life_ms": half_life_ms}))


def _exact(clicks: list[tuple[str, int]], half_life_ms: int) -> dict[str, float]:
    now = max(ts for _, ts in clicks)
    scores: dict[str, float] = {}
    for item, ts in clicks:
        scores[item] = scores.get(item, 0.0) + 2 ** (-(now - ts) / half_life_ms)
    return scores


def test_memory_stays_bounded_under_many_distinct_items():
    popular = _popular()
    for n in range(5 * CANDIDATES):
        popular.add_click(f"once-{n}", T0 + n)
        assert popular.tracked <= CANDIDATES + PRUNE_SLACK
    popular.rerank()
    assert len(popular.ranked) == KEEP


def test_a_skewed_stream_among_many_one_off_items_is_ranked_as_exact_decayed_counts():
    rng = random.Random(3)
    popular_items = [f"hit-{n}" for n in range(2000)]
    cum_weights = list(itertools.accumulate(1 / (rank + 1) ** 1.1 for rank in range(len(popular_items))))  # Zipf-like
    clicks: list[tuple[str, int]] = []
    for n in range(120_000):
        ts = T0 + n * 100 + rng.randrange(-5_000, 5_000)  # 3.3 h of clicks, a little out of order
        if n % 2:  # every other click on an item nobody clicks again: 60,000 of them
            clicks.append((f"noise-{n}", ts))
        else:
            clicks.append((rng.choices(popular_items, cum_weights=cum_weights)[0], ts))
    popular = _popular()
    for item, ts in clicks:
        popular.add_click(item, ts)
    popular.rerank()
    assert popular.tracked <= CANDIDATES + PRUNE_SLACK
    exact = _exact(clicks, HOUR_MS)
    want = sorted(exact, key=lambda item: (-exact[item], item))[:50]
    got = popular.top(50)
    assert [item for item, _ in got] == want
    for item, score in got:
        assert math.isclose(score, exact[item], rel_tol=1e-9)


def test_decay_halves_a_count_per_half_life_and_order_of_arrival_does_not_matter():
    in_order, shuffled = _popular(), _popular()
    clicks = [("old", T0), ("old", T0), ("new", T0 + 2 * HOUR_MS)]
    for item, ts in clicks:
        in_order.add_click(item, ts)
    for item, ts in reversed(clicks):
        shuffled.add_click(item, ts)
    for popular in (in_order, shuffled):
        popular.rerank()
        (first, one), (second, half) = popular.top(2)
        assert (first, second) == ("new", "old")
        assert math.isclose(one, 1.0) and math.isclose(half, 0.5)  # 2 clicks, two half-lives old


def test_no_half_life_counts_clicks():
    popular = _popular(half_life_ms=0)
    for n in range(5):
        popular.add_click("a", T0 + n * HOUR_MS)
    popular.add_click("b", T0 + 100 * HOUR_MS)
    popular.rerank()
    (a, five), (b, one) = popular.top(2, exclude={"c"})
    assert (a, b) == ("a", "b") and math.isclose(five, 5.0) and math.isclose(one, 1.0)
