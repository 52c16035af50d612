"""The simulated world: a catalogue, users whose interests drift, and a click model.

Pure numpy and seeded, and independent of any file or exposure policy, so the same world serves the
log simulator (`replay.simulate`) and a closed-loop A/B in which a recall model chooses what users see.

Mechanism (what makes the log worth learning from):
- Catalogue: top categories -> leaf categories; brands and shops belong to a top category; items get a
  leaf, a brand and a shop of that top category. Item popularity is Zipf-skewed, and so is the size of
  the leaf categories.
- Users hold several interests (a leaf category, sometimes also a brand) drawn from a prior that depends
  on their profile (gender, age bucket), so the profile carries signal. Interests DRIFT: each has a life
  span (days), and an interest the user has clicked `satiation_clicks` times is satisfied, as after a
  purchase. Either way it FADES (its click appeal drops by `fade_depth`) and a new interest, often a
  sibling leaf of an old one, takes its place. A faded interest stays in the user's click history: the
  papers' shoes case (SRU2B §5.5) once a feed keeps showing it.
- Click model: a matching active interest makes a click likely (more so for its brand and for good
  items, and in an engaged session), a sibling leaf of the same top category a little likely,
  everything else only by chance; position bias lowers the chance further down a page.
- Dislikes (off unless `dislike_brands` > 0): brands of a user's own interest leaves that the user
  skips however often they are shown (`disliked_brands`); no click reveals them, only skipped
  impressions do, which is the papers' premise for the unclicked window.

State: the interest schedule is drawn up front; satiation changes it as `observe_clicks` sees clicks,
so a World is mutable. To let two policies face the same audience, deepcopy it once per arm.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import TypeVar

import numpy as np

from xdm.config import parse_setting
from xdm.records import Item, UserProfile
from xdm.time_units import DAY_MS

APPEAL_TABLE_CELLS = 4_000_000  # (user state x leaf) cells click_prob_pairs fills at once
NEVER = 1 << 30  # start / end day of an interest slot that has not been scheduled
NEVER_MS = np.iinfo(np.int64).max  # the same in milliseconds
NEW_LEAF_TRIES = 8  # redraws for a new interest that repeats one of the user's earlier leaves
GENDERS: tuple[str, ...] = ("f", "m")
AGE_BUCKETS: tuple[str, ...] = ("18-24", "25-34", "35-44", "45-54", "55+")
CITY_TIERS: tuple[str, ...] = ("1", "2", "3", "4", "5")


@dataclass(frozen=True)
class WorldConfig:
    """Size and behaviour of the simulated world; defaults documented in replay/simulate.py."""

    n_users: int = 2000  # users
    n_items: int = 5000  # catalogue size
    n_top_cats: int = 20  # first-level categories
    n_leaf_cats: int = 200  # leaf categories, each under one top category
    n_brands: int = 400  # brands, each selling in one top category
    n_shops: int = 800  # shops, each selling in one top category
    item_zipf: float = 0.6  # exponent of the item popularity power law (1 = classic Zipf: the head wins)
    leaf_zipf: float = 0.8  # exponent of leaf-category size (items per leaf)
    activity_spread: float = 0.3  # std of log activity across users (0 = everyone equally active)
    interests_per_user: float = 4.0  # mean number of active interests at any time
    interest_life_days: float = 5.0  # mean days an interest stays active before it fades
    satiation_clicks: float = 6.0  # mean clicks that satisfy an interest (a purchase); 0 = never satisfied
    reserve_interests: int = 24  # per user, interests waiting to replace satisfied ones
    fade_depth: float = 0.97  # share of click appeal a faded interest loses (1 = never clicked again)
    brand_interest: float = 0.3  # chance that an interest also prefers one brand of its category
    sibling_interest: float = 0.5  # chance that a new interest is a sibling leaf of an existing one
    profile_tilt: float = 1.0  # how strongly gender/age tilt the interest prior (log-scale std)
    engagement_shape: float = 3.0  # gamma shape of a session's mood (clicks x mood, mean 1); small = mostly browsing
    leaf_ctr: float = 0.15  # click chance for an item of an active interest's leaf (top position)
    brand_boost: float = 1.0  # extra appeal (x (1 + boost)) of an interest's preferred brand
    top_ctr: float = 0.006  # click chance for a sibling leaf of an active interest
    random_ctr: float = 0.002  # click chance for anything (noise clicks)
    position_decay: float = 0.25  # position bias: appeal x (1 + position) ** -decay
    dislike_brands: float = 0.0  # mean brands a user never wants among their interests' brands (0 = off)
    dislike_depth: float = 0.9  # share of interest-driven click chance a disliked brand's items lose
    start_ms: int = 1_577_376_000_000  # 2019-12-27 00:00 China time, the papers' collection start

    def __post_init__(self) -> None:
        if not 0.0 <= self.dislike_depth <= 1.0:
            raise ValueError(f"dislike_depth must be within [0, 1], got {self.dislike_depth}")

    @classmethod
    def scaled(cls, n_users: int, n_items: int) -> WorldConfig:
        """Defaults with the category tree sized to the catalogue (~25 items a leaf, as at 5000 items)."""
        leaves = max(2, round(n_items / 25))
        return cls(
            n_users=n_users,
            n_items=n_items,
            n_top_cats=max(1, round(leaves / 10)),
            n_leaf_cats=leaves,
            n_brands=max(1, round(n_items / 12.5)),
            n_shops=max(1, round(n_items / 6.25)),
        )

    def with_settings(self, settings: tuple[str, ...] | list[str]) -> WorldConfig:
        """This config with `FIELD=VALUE` items applied (`xdm simulate --world`); a bad item raises ValueError
        naming it. The size fields come from --users / --items and are not settable here."""
        return with_number_settings(self, settings, "--world", fixed=("n_users", "n_items"))


Numeric = TypeVar("Numeric")  # a frozen dataclass whose fields are all ints and floats


def with_number_settings(config: Numeric, settings: tuple[str, ...] | list[str] | None, option: str,
                         fixed: tuple[str, ...] = ()) -> Numeric:
    """`config` with `FIELD=VALUE` items applied, each typed like the field's default and never negative
    (the simulator's --world and --feed); a bad item raises ValueError naming `option` and the item."""
    settable = sorted(f.name for f in fields(config) if f.name not in fixed)
    changes: dict[str, float | int] = {}
    for item in settings or ():
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or name not in settable:
            raise ValueError(f"{option} {item!r}: expected FIELD=VALUE with FIELD one of {', '.join(settable)}")
        kind = type(getattr(config, name))  # every field is an int or a float, as its default says
        try:
            changes[name] = parse_setting(text, kind)
        except ValueError:
            raise ValueError(f"{option} {item!r}: {text!r} is not a number ({kind.__name__})") from None
        if changes[name] < 0:
            raise ValueError(f"{option} {item!r}: must not be negative")
    return replace(config, **changes)


@dataclass(frozen=True)
class Catalogue:
    """Items as integer arrays (index = item number); ids are formatted from the numbers."""

    leaf_top: np.ndarray  # (n_leaf,) top category of each leaf
    brand_top: np.ndarray  # (n_brands,) top category of each brand
    item_leaf: np.ndarray  # (n_items,)
    item_top: np.ndarray  # (n_items,)
    item_brand: np.ndarray  # (n_items,)
    item_shop: np.ndarray  # (n_items,)
    item_pop: np.ndarray  # (n_items,) popularity, sums to 1
    item_quality: np.ndarray  # (n_items,) click appeal multiplier, mean ~1
    leaf_items: np.ndarray  # item numbers sorted by leaf (CSR values)
    leaf_offsets: np.ndarray  # (n_leaf + 1,) CSR offsets into leaf_items
    leaf_item_cdf: np.ndarray  # per-leaf popularity CDF over leaf_items, shifted by leaf number

    @property
    def n_items(self) -> int:
        return len(self.item_leaf)

    @property
    def n_leaves(self) -> int:
        return len(self.leaf_top)

    def leaf_cdf(self, focus: float = 1.0) -> np.ndarray:
        """Per-leaf CDF over leaf_items of popularity ** focus (focus > 1 concentrates on the leaf's hits)."""
        return _leaf_cdf(self.item_leaf[self.leaf_items], self.item_pop[self.leaf_items] ** focus, self.leaf_offsets)

    def sample_in_leaf(
        self, leaves: np.ndarray, rng: np.random.Generator, cdf: np.ndarray | None = None
    ) -> np.ndarray:
        """One item per requested leaf, drawn by popularity inside the leaf (empty leaves give -1).

        `cdf` is a `leaf_cdf(focus)`; by default items are drawn in proportion to their popularity.
        """
        # the CDF holds leaf + within-leaf CDF, so one searchsorted serves every leaf at once
        draws = leaves + rng.random(len(leaves)) * (1.0 - 1e-9)
        pos = np.searchsorted(self.leaf_item_cdf if cdf is None else cdf, draws, side="right")
        empty = self.leaf_offsets[leaves] == self.leaf_offsets[leaves + 1]
        pos = np.minimum(pos, len(self.leaf_items) - 1)
        return np.where(empty, -1, self.leaf_items[pos])

    def sample_popular(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.minimum(np.searchsorted(np.cumsum(self.item_pop), rng.random(n)), self.n_items - 1)


@dataclass(frozen=True)
class Users:
    """Profiles and the whole interest timeline, padded to (n_users, k) arrays (-1 = no interest)."""

    gender: np.ndarray  # (n_users,) index into GENDERS
    age: np.ndarray  # (n_users,) index into AGE_BUCKETS
    city: np.ndarray  # (n_users,) index into CITY_TIERS
    activity: np.ndarray  # (n_users,) relative activity level, mean ~1 (heavy users are rarer)
    leaf: np.ndarray  # (n_users, k) interest leaf category, -1 padding
    brand: np.ndarray  # (n_users, k) preferred brand, -1 none
    weight: np.ndarray  # (n_users, k) strength of the interest (appeal multiplier)
    start_ms: np.ndarray  # (n_users, k) when the interest becomes active (before start_ms for running ones)
    end_ms: np.ndarray  # (n_users, k) when it fades (NEVER_MS: not scheduled); World moves it on satiation

    @property
    def n_users(self) -> int:
        return len(self.gender)

    def segment(self) -> np.ndarray:
        """Profile segment (gender x age) of every user: the unit the interest prior is tilted by."""
        return self.gender * len(AGE_BUCKETS) + self.age


def _zipf_weights(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Power-law weights in a random order (rank r gets r^-exponent), summing to 1."""
    weights = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    rng.shuffle(weights)
    return weights / weights.sum()


def make_catalogue(cfg: WorldConfig, rng: np.random.Generator) -> Catalogue:
    leaf_top = np.concatenate([np.arange(cfg.n_top_cats), rng.integers(0, cfg.n_top_cats, cfg.n_leaf_cats)])
    leaf_top = leaf_top[: cfg.n_leaf_cats]  # every top category owns at least one leaf
    brand_top = rng.integers(0, cfg.n_top_cats, cfg.n_brands)
    shop_top = rng.integers(0, cfg.n_top_cats, cfg.n_shops)
    leaf_size = _zipf_weights(cfg.n_leaf_cats, cfg.leaf_zipf, rng)
    item_leaf = rng.choice(cfg.n_leaf_cats, size=cfg.n_items, p=leaf_size)
    item_top = leaf_top[item_leaf]
    item_brand = _pick_within_top(item_top, brand_top, rng)
    item_shop = _pick_within_top(item_top, shop_top, rng)
    item_pop = _zipf_weights(cfg.n_items, cfg.item_zipf, rng)
    # popular items are popular partly because they are better: quality rises with popularity rank
    rank_pct = np.argsort(np.argsort(item_pop)) / max(cfg.n_items - 1, 1)
    item_quality = (0.7 + 0.6 * rank_pct) * np.exp(0.2 * rng.standard_normal(cfg.n_items))
    order = np.argsort(item_leaf, kind="stable")
    offsets = np.searchsorted(item_leaf[order], np.arange(cfg.n_leaf_cats + 1))
    return Catalogue(
        leaf_top=leaf_top,
        brand_top=brand_top,
        item_leaf=item_leaf,
        item_top=item_top,
        item_brand=item_brand,
        item_shop=item_shop,
        item_pop=item_pop,
        item_quality=item_quality,
        leaf_items=order,
        leaf_offsets=offsets,
        leaf_item_cdf=_leaf_cdf(item_leaf[order], item_pop[order], offsets),
    )


def _pick_within_top(item_top: np.ndarray, owner_top: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each item an owner (brand or shop) of the item's top category, Zipf-skewed; -1 if none exists."""
    picked = np.full(len(item_top), -1)
    for top in np.unique(item_top):
        owners = np.flatnonzero(owner_top == top)
        if len(owners) == 0:
            continue
        members = np.flatnonzero(item_top == top)
        picked[members] = rng.choice(owners, size=len(members), p=_zipf_weights(len(owners), 1.0, rng))
    return picked


def _leaf_cdf(sorted_leaf: np.ndarray, sorted_weight: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """leaf + CDF of the weights within the leaf, for items sorted by leaf (values in (leaf, leaf + 1])."""
    edges = np.concatenate([[0.0], np.cumsum(sorted_weight)])
    before = edges[offsets[:-1]]
    total = edges[offsets[1:]] - before
    return sorted_leaf + (edges[1:] - before[sorted_leaf]) / total[sorted_leaf]


def segment_prior(cfg: WorldConfig, cat: Catalogue, rng: np.random.Generator) -> np.ndarray:
    """(n_segments, n_leaves) interest prior: leaf size tilted per profile segment at the top-category level."""
    n_segments = len(GENDERS) * len(AGE_BUCKETS)
    tilt = np.exp(cfg.profile_tilt * rng.standard_normal((n_segments, cfg.n_top_cats)))
    leaf_mass = np.bincount(cat.item_leaf, weights=cat.item_pop, minlength=cat.n_leaves) + 1e-6
    prior = leaf_mass[None, :] * tilt[:, cat.leaf_top]
    return prior / prior.sum(axis=1, keepdims=True)


class RowSampler:
    """Draws a column index from one of many categorical distributions (the rows of a weight matrix) at once."""

    def __init__(self, weights: np.ndarray) -> None:
        cdf = np.cumsum(weights, axis=1)
        total = cdf[:, -1:]
        self.empty = total[:, 0] <= 0
        cdf = np.divide(cdf, total, out=np.zeros_like(cdf), where=total > 0)
        # row r's CDF is shifted by r so that one searchsorted serves every row
        self.flat = (cdf + np.arange(len(weights))[:, None]).ravel()
        self.n_cols = weights.shape[1]

    def sample(self, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One column per entry of `rows`; -1 where that row has no weight."""
        hit = np.searchsorted(self.flat, rows + rng.random(len(rows)) * (1.0 - 1e-9), side="right")
        cols = np.minimum(hit - rows * self.n_cols, self.n_cols - 1)
        return np.where(self.empty[rows], -1, cols)


def make_users(
    cfg: WorldConfig, cat: Catalogue, prior: np.ndarray, days: int, rng: np.random.Generator
) -> Users:
    """Profiles and interest timelines covering days [0, days)."""
    n = cfg.n_users
    gender, age = rng.integers(0, len(GENDERS), n), rng.integers(0, len(AGE_BUCKETS), n)
    city = rng.choice(len(CITY_TIERS), size=n, p=[0.15, 0.25, 0.25, 0.2, 0.15])
    # mean 1 with a heavy tail of very active users
    activity = rng.lognormal(-cfg.activity_spread**2 / 2, cfg.activity_spread, n)
    segment = gender * len(AGE_BUCKETS) + age
    life = cfg.interest_life_days
    # a steady-state set already running at day 0, plus arrivals at the rate that keeps the count steady
    initial = 1 + rng.poisson(max(cfg.interests_per_user - 1.0, 0.0), n)
    arrivals = rng.poisson(cfg.interests_per_user / life * days, n)
    timeline = initial + arrivals
    start = _interest_starts(initial, arrivals, days, cfg.reserve_interests, rng)
    k = start.shape[1]
    slot = np.arange(k)[None, :]
    exists = slot < (timeline + cfg.reserve_interests)[:, None]
    leaf = _interest_leaves(cfg, cat, prior, segment, initial, exists, rng)
    brand = _interest_brands(cfg, cat, leaf, rng)
    # remaining life is exponential for running interests too (memoryless); reserves wait for a satiation
    end = np.where(slot < timeline[:, None], start + 1 + rng.exponential(life, (n, k)).astype(np.int64), NEVER)
    scheduled = exists & (start != NEVER)
    weight = np.where(exists, rng.uniform(0.6, 1.4, (n, k)), 0.0)
    return Users(
        gender=gender,
        age=age,
        city=city,
        activity=activity,
        leaf=leaf,
        brand=np.where(exists, brand, -1),
        weight=weight,
        # interests change at midnight; a satiation (World.observe_clicks) ends one at the click instead
        start_ms=np.where(scheduled, cfg.start_ms + start * DAY_MS, NEVER_MS),
        end_ms=np.where(scheduled, cfg.start_ms + end * DAY_MS, NEVER_MS),
    )


def _interest_starts(
    initial: np.ndarray, arrivals: np.ndarray, days: int, reserve: int, rng: np.random.Generator
) -> np.ndarray:
    """(n_users, k) start day per interest slot: -1 for the initial ones, sorted arrival days, then NEVER."""
    n, k = len(initial), int((initial + arrivals).max()) + reserve
    slot = np.arange(k)[None, :]
    drawn = np.where(slot < arrivals[:, None], rng.integers(0, max(days, 1), (n, k)), NEVER)
    arrival_days = np.sort(drawn, axis=1)  # unused draws (NEVER) sort to the end
    start = np.full((n, k), NEVER, dtype=np.int64)
    start[slot < initial[:, None]] = -1
    rows, cols = np.nonzero((slot >= initial[:, None]) & (slot < (initial + arrivals)[:, None]))
    start[rows, cols] = arrival_days[rows, cols - initial[rows]]
    return start


def _interest_leaves(
    cfg: WorldConfig,
    cat: Catalogue,
    prior: np.ndarray,
    segment: np.ndarray,
    initial: np.ndarray,
    exists: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Leaf of every interest slot: from the segment prior, or (arrivals, sometimes) a sibling of an earlier one."""
    n, k = exists.shape
    n_top = int(cat.leaf_top.max()) + 1
    from_prior = RowSampler(prior)
    # row (segment, top): the segment prior restricted to the leaves of that top category
    in_top = cat.leaf_top[None, :] == np.arange(n_top)[:, None]
    from_siblings = RowSampler((prior[:, None, :] * in_top[None, :, :]).reshape(-1, prior.shape[1]))
    leaf = np.full((n, k), -1, dtype=np.int64)
    for j in range(k):
        users = np.flatnonzero(exists[:, j])
        drifts = (j >= initial[users]) & (rng.random(len(users)) < cfg.sibling_interest)
        earlier = leaf[users, (rng.random(len(users)) * max(j, 1)).astype(np.int64)]
        pending = np.ones(len(users), dtype=bool)
        # a new interest is new: redraw (a few times) when the user already had that leaf, so that a faded
        # interest is not silently revived by its own twin
        for _ in range(NEW_LEAF_TRIES):
            fresh = from_prior.sample(segment[users], rng)
            # drift to a neighbouring interest (women's wear -> children's wear): a leaf of an earlier one's top
            sibling = from_siblings.sample(segment[users] * n_top + cat.leaf_top[np.maximum(earlier, 0)], rng)
            drawn = np.where(drifts & (sibling >= 0), sibling, fresh)
            leaf[users[pending], j] = drawn[pending]
            pending &= (leaf[users, :j] == drawn[:, None]).any(axis=1)
            if not pending.any():
                break
    return leaf


def _random_leaf_items(cat: Catalogue, leaf: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A uniformly drawn item of each leaf, and the leaf's size (0 for -1 padding or an empty leaf, whose
    item is then meaningless): one draw per cell, so callers' random streams do not depend on the sizes."""
    safe = np.maximum(leaf, 0)
    lo, size = cat.leaf_offsets[safe], cat.leaf_offsets[safe + 1] - cat.leaf_offsets[safe]
    pick = cat.leaf_items[np.minimum(lo + (rng.random(leaf.shape) * size).astype(np.int64), len(cat.leaf_items) - 1)]
    return pick, np.where(leaf >= 0, size, 0)


def _interest_brands(cfg: WorldConfig, cat: Catalogue, leaf: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A preferred brand for some interests: the brand of a random item of the leaf (-1 none)."""
    pick, size = _random_leaf_items(cat, leaf, rng)
    wanted = (rng.random(leaf.shape) < cfg.brand_interest) & (size > 0)
    return np.where(wanted, cat.item_brand[pick], -1)


def disliked_brands(cfg: WorldConfig, cat: Catalogue, users: Users, rng: np.random.Generator) -> np.ndarray:
    """(n_users, m) brands each user skips however often they are shown, -1 padding; m = 0 when off.

    The papers' premise for unclicked items: a user can want a category and still not want some of what
    a feed shows of it. Each user gets Poisson(`dislike_brands`) of them, each the brand of a random item
    of one of the user's interest leaves (so a feed that serves those leaves shows them), never a brand
    one of the user's interests prefers. No click reveals a dislike; only what is shown and skipped does.
    """
    n = len(users.leaf)
    counts = rng.poisson(cfg.dislike_brands, n) if cfg.dislike_brands > 0 else np.zeros(n, dtype=np.int64)
    m = int(counts.max(initial=0))
    if m == 0:
        return np.full((n, 0), -1, dtype=np.int64)
    valid_first = np.argsort(users.leaf < 0, axis=1, kind="stable")  # each row's interest slots, then padding
    n_valid = (users.leaf >= 0).sum(axis=1)
    nth = (rng.random((n, m)) * np.maximum(n_valid, 1)[:, None]).astype(np.int64)
    slots = valid_first[np.arange(n)[:, None], nth]
    pick, size = _random_leaf_items(cat, users.leaf[np.arange(n)[:, None], slots], rng)
    brand = cat.item_brand[pick]
    preferred = (brand[:, :, None] == users.brand[:, None, :]).any(axis=2)
    wanted = (np.arange(m)[None, :] < counts[:, None]) & (size > 0) & (brand >= 0) & ~preferred
    return np.where(wanted, brand, -1)


class World:
    """A seeded world: catalogue, users, interest drift and the click model."""

    def __init__(self, cfg: WorldConfig, days: int, seed: int) -> None:
        self.cfg = cfg
        self.days = days
        rng = np.random.default_rng(seed)
        self.catalogue = make_catalogue(cfg, rng)
        self.prior = segment_prior(cfg, self.catalogue, rng)
        self.users = make_users(cfg, self.catalogue, self.prior, days, rng)
        # Mutable state: clicks left until each interest is satisfied. Users' start/end days change too
        # when `observe_clicks` satisfies an interest; copy.deepcopy(world) branches it (one per A/B arm).
        budget = rng.poisson(cfg.satiation_clicks, self.users.leaf.shape) + 1 if cfg.satiation_clicks > 0 else None
        self.clicks_left = budget
        self._rng = np.random.default_rng([seed, 2])
        # Own stream: switching dislikes on leaves every other draw (catalogue, users, clicks) as it was.
        self.disliked = disliked_brands(cfg, self.catalogue, self.users, np.random.default_rng([seed, 3]))

    # ------------------------------------------------------------------------------------ interests

    def _time(self, ts_ms: np.ndarray | int) -> np.ndarray | int:
        # one time per user row broadcasts over that row's interest slots
        return np.asarray(ts_ms).reshape(-1, 1) if np.ndim(ts_ms) else ts_ms

    def active_mask(self, users: np.ndarray, ts_ms: np.ndarray | int) -> np.ndarray:
        """(len(users), k) True where the interest slot is active at ts_ms (one time, or one per user row)."""
        u, t = self.users, self._time(ts_ms)
        return (u.leaf[users] >= 0) & (u.start_ms[users] <= t) & (u.end_ms[users] > t)

    def faded_mask(self, users: np.ndarray, ts_ms: np.ndarray | int) -> np.ndarray:
        """(len(users), k) True where the interest slot was active once and has faded by ts_ms."""
        u, t = self.users, self._time(ts_ms)
        return (u.leaf[users] >= 0) & (u.end_ms[users] <= t)

    def interest_weights(self, users: np.ndarray, ts_ms: np.ndarray | int) -> np.ndarray:
        """(len(users), k) appeal of each interest slot at ts_ms: full when active, faded after its end."""
        u = self.users
        faded_weight = u.weight[users] * (1.0 - self.cfg.fade_depth)
        return np.where(self.active_mask(users, ts_ms), u.weight[users],
                        np.where(self.faded_mask(users, ts_ms), faded_weight, 0.0))

    def observe_clicks(self, users: np.ndarray, items: np.ndarray, ts_ms: np.ndarray) -> None:
        """Let the world see clicks, in time order: an interest clicked enough times is satisfied (bought).

        It fades right after the satisfying click and the user's next reserve interest takes its place,
        so the click history keeps interests the user no longer wants: the papers' shoes case (SRU2B
        §5.5). Clicks already drawn for a session are not redrawn; the change shows from the next one.
        """
        if self.clicks_left is None or len(users) == 0:
            return
        u = self.users
        users, items, ts = np.asarray(users), np.asarray(items), np.asarray(ts_ms)
        hit = self.active_mask(users, ts) & (u.leaf[users] == self.catalogue.item_leaf[items][:, None])
        rows, cols = np.nonzero(hit)
        np.subtract.at(self.clicks_left, (users[rows], cols), 1)
        done = hit & (self.clicks_left[users] <= 0)
        for row, col in zip(*np.nonzero(done)):
            self._satisfy(int(users[row]), int(col), int(ts[row]))

    def _satisfy(self, user: int, slot: int, ts_ms: int) -> None:
        u = self.users
        if u.end_ms[user, slot] <= ts_ms + 1:
            return  # already satisfied by an earlier click of this batch
        u.end_ms[user, slot] = ts_ms + 1
        waiting = np.flatnonzero((u.start_ms[user] == NEVER_MS) & (u.leaf[user] >= 0))
        if len(waiting):  # a new need takes the satisfied one's place
            new = waiting[0]
            u.start_ms[user, new] = ts_ms + 1
            life_ms = (1 + self._rng.exponential(self.cfg.interest_life_days)) * DAY_MS
            u.end_ms[user, new] = ts_ms + 1 + int(life_ms)

    # ------------------------------------------------------------------------------------ click model

    def session_engagement(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Mood of n sessions: a multiplier (mean 1) on interest clicks; most sessions are casual browsing."""
        shape = self.cfg.engagement_shape
        return rng.gamma(shape, 1.0 / shape, n) if shape > 0 else np.ones(n)

    def click_prob_pairs(
        self,
        users: np.ndarray,
        items: np.ndarray,
        ts_ms: np.ndarray | int,
        positions: np.ndarray | None = None,
        engagement: np.ndarray | float = 1.0,
    ) -> np.ndarray:
        """Click probability of each (user, item) impression at time ts_ms (one per pair or shared).

        `engagement` (per pair or shared) scales interest-driven clicks: a session's mood.
        """
        cfg, cat = self.cfg, self.catalogue
        users, items = np.asarray(users), np.asarray(items)
        ts = np.broadcast_to(np.asarray(ts_ms), users.shape)
        appeal, sibling = self._appeal(users, items, ts)
        p = (cfg.leaf_ctr * appeal * cat.item_quality[items] + cfg.top_ctr * sibling) * engagement
        if self.disliked.shape[1]:  # off: not even a multiply by 1, so existing worlds stay bit-identical
            brand = cat.item_brand[items]
            hit = (self.disliked[users] == brand[:, None]).any(axis=1) & (brand >= 0)  # -1 pads match no item
            p = np.where(hit, p * (1.0 - cfg.dislike_depth), p)
        if positions is not None:
            p = p * (1.0 + np.maximum(np.asarray(positions), 0)) ** -cfg.position_decay
        p = np.minimum(p, 0.95)
        return 1.0 - (1.0 - p) * (1.0 - cfg.random_ctr)

    def _appeal(self, users: np.ndarray, items: np.ndarray, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Interest appeal of each pair (matching leaves, brand bonus) and whether only a sibling leaf matches.

        Pairs come in bulk with few distinct (user, time) states, so the interests are evaluated once
        per state and spread over a (state, leaf) table: a lookup per pair instead of a scan of the
        user's interest slots.
        """
        cat, u = self.catalogue, self.users
        order = np.lexsort((ts, users))
        new_state = np.ones(len(users), dtype=bool)
        new_state[1:] = (np.diff(users[order]) != 0) | (np.diff(ts[order]) != 0)
        state = np.empty(len(users), dtype=np.int64)
        state[order] = np.cumsum(new_state) - 1
        firsts = order[new_state]
        appeal = np.zeros(len(users))
        top_weight = np.zeros(len(users))
        chunk = max(1, APPEAL_TABLE_CELLS // cat.n_leaves)  # bounds the table's memory
        for lo in range(0, len(firsts), chunk):
            reps = firsts[lo : lo + chunk]
            weight = self.interest_weights(users[reps], ts[reps])  # (states, k)
            rows, slots = np.nonzero(weight > 0)
            leaf = u.leaf[users[reps]][rows, slots]
            w = weight[rows, slots]
            by_leaf = np.zeros((len(reps), cat.n_leaves))
            np.add.at(by_leaf, (rows, leaf), w)
            by_top = np.zeros((len(reps), int(cat.leaf_top.max()) + 1))
            np.add.at(by_top, (rows, cat.leaf_top[leaf]), w)
            pairs = np.flatnonzero((state >= lo) & (state < lo + len(reps)))
            local = state[pairs] - lo
            appeal[pairs] = by_leaf[local, cat.item_leaf[items[pairs]]]
            top_weight[pairs] = by_top[local, cat.item_top[items[pairs]]]
            appeal[pairs] += self.cfg.brand_boost * _brand_bonus(
                rows, leaf, u.brand[users[reps]][rows, slots], w, local, cat.item_leaf[items[pairs]],
                cat.item_brand[items[pairs]], cat.n_leaves,
            )
        return appeal, (top_weight > 0) & (appeal == 0)

    def click_prob(
        self, user: int, items: np.ndarray, ts_ms: int, positions: np.ndarray | None = None, engagement: float = 1.0
    ) -> np.ndarray:
        """Click probability of one user for a page of items shown at ts_ms (positions 0.. for bias)."""
        items = np.asarray(items)
        return self.click_prob_pairs(np.full(len(items), user), items, ts_ms, positions, engagement)

    # ------------------------------------------------------------------------------------ records

    def item_id(self, items: np.ndarray) -> np.ndarray:
        return np.char.add("i", np.char.zfill(np.asarray(items).astype(str), len(str(self.cfg.n_items))))

    def user_id(self, users: np.ndarray) -> np.ndarray:
        return np.char.add("u", np.char.zfill(np.asarray(users).astype(str), len(str(self.cfg.n_users))))

    def item_number(self, item_ids: list[str]) -> np.ndarray:
        """Inverse of item_id: the catalogue row of each id (ValueError for an id this world never wrote)."""
        return np.array([_number(i, "i", self.cfg.n_items) for i in item_ids], dtype=np.int64)

    def item_records(self) -> list[Item]:
        cat = self.catalogue
        ids = self.item_id(np.arange(cat.n_items))
        leaf = _labels("leaf", cat.item_leaf, cat.n_leaves)
        top = _labels("top", cat.item_top, self.cfg.n_top_cats)
        brand = _labels("b", cat.item_brand, self.cfg.n_brands)
        shop = _labels("s", cat.item_shop, self.cfg.n_shops)
        return [Item(*row) for row in zip(ids.tolist(), leaf, top, brand, shop)]

    def user_records(self) -> list[UserProfile]:
        u = self.users
        ids = self.user_id(np.arange(u.n_users)).tolist()
        return [
            UserProfile(uid, (("age_bucket", AGE_BUCKETS[a]), ("city_tier", CITY_TIERS[c]), ("gender", GENDERS[g])))
            for uid, g, a, c in zip(ids, u.gender.tolist(), u.age.tolist(), u.city.tolist())
        ]


def _brand_bonus(
    rows: np.ndarray,
    leaf: np.ndarray,
    brand: np.ndarray,
    weight: np.ndarray,
    pair_rows: np.ndarray,
    pair_leaf: np.ndarray,
    pair_brand: np.ndarray,
    n_leaves: int,
) -> np.ndarray:
    """Per pair, the summed weight of interests on the pair's leaf that also prefer the pair's brand."""
    has = brand >= 0
    if not has.any():
        return np.zeros(len(pair_rows))
    # (row, leaf, brand) as one sortable key; equal keys' weights are summed
    span = int(max(brand.max(), pair_brand.max())) + 2
    keys = (rows[has] * n_leaves + leaf[has]) * span + brand[has]
    keys, where = np.unique(keys, return_inverse=True)
    sums = np.bincount(where, weights=weight[has])
    wanted = (pair_rows * n_leaves + pair_leaf) * span + pair_brand
    at = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
    return np.where((keys[at] == wanted) & (pair_brand >= 0), sums[at], 0.0)


def _number(record_id: str, prefix: str, n: int) -> int:
    number = int(record_id[1:]) if record_id[:1] == prefix and record_id[1:].isdigit() else -1
    if not 0 <= number < n:
        raise ValueError(f"{record_id!r} is not an id of this world ({prefix}0..{prefix}{n - 1})")
    return number


def _labels(prefix: str, values: np.ndarray, n: int) -> list[str]:
    """Category-style labels ('leaf007'); -1 (none of that kind exists) becomes the unknown marker ''."""
    width = len(str(n))
    return [f"{prefix}{v:0{width}d}" if v >= 0 else "" for v in values.tolist()]
