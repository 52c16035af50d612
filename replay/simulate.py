"""Simulate a recommender feed over a `World` and write its impression log in the plain format.

Visits. Each day a user opens the app with chance `active_day_prob` x their activity, for one session
plus Poisson(`extra_sessions` x activity) more, each starting in its own hour (evening peak). A
session is a gamma-distributed number of feed pages of `page_size` items; impressions are ~1.5 s
apart and a click adds ~25 s of dwell, so a session never has a 10-minute gap inside it and the
papers' session rule (gap > 10 min or > 50 clicks) finds these sessions again. The session's mood
(`WorldConfig.engagement_shape`) scales its clicks. The world sees a session's clicks when it ends,
so interests satisfied in it are gone from the next session on.

Exposure. At the start of a session the feed recalls `candidate_ratio` x (its impressions) candidate
items and fills its pages from them, so candidates come back on later pages; items impressed twice
and never clicked are what the unclicked window (§4.1) collects. Each candidate comes from a source:

- intent    (`intent_share`): an item of one of the user's active interests, standing for live
            signals a feed reacts to (searches, add-to-cart); most clicks come from here;
- history   (`history_share`): an item of the leaf of one of the user's remembered clicks
            (item-to-item recall), sometimes of a sibling leaf (`sibling_share`). It remembers clicks
            on interests the user has lost too, so it already lags behind drift a little;
- stale     (`stale_exposure`): THE UNCLICKED-SIGNAL MECHANISM, with its strength. An item of an
            interest the user clicked in the past but has since lost (satisfied or faded: the papers'
            shoes case, SRU2B §5.5). It stands for a production recommender whose model lags behind
            interest drift and keeps pushing what the user used to click. The user no longer clicks
            those items, so they pile up in the unclicked window while the next clicks come from the
            active interests; the click history holds both. A model that subtracts the unclicked
            representation (XDM, eq. 6/8) can therefore tell stale history from live history; one that
            only sees clicks (SDM) cannot. 0 switches the mechanism off (users' slots go to history);
            larger values strengthen it. `replay.stats` measures the effect from the files alone
            (`leaf_hit_minus_unclicked` vs `leaf_hit_clicks`).
- popular   (`popular_share`): globally popular items (Zipf);
- explore   (the rest): an item of a leaf drawn from the user's profile-segment prior.

Inside a leaf the feed draws items by popularity ** `leaf_focus`.

Unclicked records without signal (`unclicked_noise`, off at 0). A share of the session's candidates is
logged, wherever it is shown and not clicked, as a decoy instead: one item per candidate drawn by
global popularity, independent of the user, repeated wherever the candidate is. It stands for a feed
whose impression log does not record what the user looked at (impressions logged for items scrolled
past unseen, or a logging join that attaches the wrong item). Clicks, their impressions and every other
draw are untouched (decoys come from their own random stream), so at 1 the log is the same feed with an
unclicked window that says nothing about the user: what `xdm stats --window-signal` should find ~0
on, and where a plug-in that reads the window should cost nothing (#28). The world family
(`replay/world_family.py`, docs/worlds.md) names the settings of the worlds this module can write.

Defaults (`xdm simulate`: 48,000 users, 5,000 items, 10 days) write ~58.4 M events (CTR ~2.5 %, 3.4 GB
of events.csv) in ~110 s, giving ~883 k training samples and ~13,600 test users on the offline 2-day
test split, Table 1's scale (Taobao: 1.04 M and 17,048); the README's Table 2 section says how that
world was declared the default before its full table was read. The 12,000-user world (the default
before: 14.6 M events, ~219 k samples, ~3,400 test users) and the 14-day world of 6,000 users (still the
closed loop's, ~1,900 test users) are the same per-user behaviour at a quarter and an eighth of the
users. Ten days keep the long-term window near Table 1's
(seven would leave early samples with a few days of history). Per-user behaviour does not depend on the
number of users; the figures below were measured on the 2000-user world unless said. Measured from the
files alone with the stream's window rules (`xdm stats`, seed 1), the averages at sample time on the
default world are short-term 12.8, long-term 16.5, unclicked 76.3 (12,000 users: 12.7 / 16.1 / 76.1;
14-day world: 12.5 / 18.0 / 76.7),
against the papers' Table 1 (Taobao) 13.5 / 20.9 / 71.3; the category-level stand-in hits a label leaf
0.858 -> 0.877 of the time once the unclicked share is subtracted. Item
popularity (`item_zipf` 0.6) and the popular slots (5 %) are set so that, as in a catalogue of millions,
the most clicked items are a weak floor: on that world's 1-day test split the 50 most popular items
hit 22.8 % of test users, recalling popular items from each user's clicked leaves 41.2 % (43.7 % when
leaves the user keeps skipping are discounted). With `item_zipf` 1.0 and 15 % popular slots (the
defaults before) popularity alone hit 53 % and no sequential model beat it. Fewer users scale the log
down at the same per-user behaviour (1000 users: ~1.7 M events); a much smaller catalogue means fewer
leaves, so more clicks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from replay.world import RowSampler, World, WorldConfig, with_number_settings
from xdm.log_format import EventWriter, LogDir, write_items, write_users
from xdm.progress import progress_bar
from xdm.time_units import DAY_MS, HOUR_MS

HISTORY, STALE, INTENT, POPULAR, EXPLORE = range(5)  # feed sources, see the module docstring
MAX_SESSIONS = 6  # sessions a user can have in one day, each in its own hour
# Relative chance that a session starts in each hour of the day (an e-commerce app's evening peak).
HOUR_WEIGHTS = np.array([3, 2, 1, 1, 1, 1, 2, 4, 6, 7, 7, 7, 8, 8, 7, 7, 7, 8, 9, 11, 13, 13, 10, 6], dtype=float)


@dataclass(frozen=True)
class FeedConfig:
    """How users visit and what the feed shows them."""

    active_day_prob: float = 0.20  # chance a user of average activity opens the app on a given day
    extra_sessions: float = 0.2  # mean extra sessions (beyond the first) on an active day
    pages_per_session: float = 25.0  # mean feed pages per session (gamma-distributed, shape 2)
    max_pages: int = 60  # cap on pages per session, keeps a session under ~30 minutes
    page_size: int = 20  # items per feed page
    history_share: float = 0.15  # slots recalled from the user's remembered clicks
    stale_exposure: float = 0.40  # slots from clicked-then-faded interests: THE mechanism (module doc)
    intent_share: float = 0.10  # slots from the user's active interests (live intent signals, e.g. searches)
    popular_share: float = 0.05  # slots from globally popular items; explore gets the rest
    candidate_ratio: float = 0.4  # candidates recalled per session / its impressions (each shown ~1/ratio times)
    leaf_focus: float = 0.5  # inside a leaf the feed picks items by popularity ** focus (repeats hits)
    sibling_share: float = 0.15  # history slots that show a sibling leaf of the remembered click
    history_len: int = 100  # clicks the feed remembers per user
    scroll_ms: float = 1_500.0  # mean time between two impressions (ms)
    dwell_ms: float = 25_000.0  # mean time spent on a clicked item before scrolling on (ms)
    unclicked_noise: float = 0.0  # share of candidates logged as a user-independent decoy when not clicked (doc)

    def __post_init__(self) -> None:
        shares = (self.history_share, self.stale_exposure, self.intent_share, self.popular_share)
        if min(shares) < 0 or sum(shares) > 1:
            raise ValueError("feed shares must be >= 0 and history + stale + intent + popular must not exceed 1")
        if not 0.0 <= self.unclicked_noise <= 1.0:
            raise ValueError(f"unclicked_noise must be within [0, 1], got {self.unclicked_noise}")

    def with_settings(self, settings: tuple[str, ...] | list[str]) -> FeedConfig:
        """This config with `FIELD=VALUE` items applied (`xdm simulate --feed`); a bad item raises ValueError."""
        return with_number_settings(self, settings, "--feed")


@dataclass(frozen=True)
class SimSummary:
    """What a simulation wrote; the hidden-state counts are for diagnosis, not for evaluation."""

    out_dir: Path
    users: int
    items: int
    days: int
    seed: int
    events: int
    impressions: int
    clicks: int
    stale_impressions: int  # impressions filled by the stale-interest mechanism
    seconds: float  # wall time of generation and writing
    files: tuple[Path, ...] = field(default=())
    decoy_impressions: int = 0  # unclicked impressions logged as a decoy (`FeedConfig.unclicked_noise`)

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("inf")


@dataclass
class _FeedMemory:
    """What the simulated recommender remembers about each user between sessions."""

    clicks: np.ndarray  # (n_users, history_len) ring buffer of clicked items, -1 empty
    n_clicks: np.ndarray  # (n_users,) clicks ever appended
    interest_clicked: np.ndarray  # (n_users, k) the user clicked this interest's leaf at least once


@dataclass
class _Batch:
    """Impressions of one round of sessions, one entry per feed slot."""

    user: np.ndarray
    item: np.ndarray
    ts: np.ndarray
    request: np.ndarray
    position: np.ndarray
    clicked: np.ndarray
    click_ts: np.ndarray
    stale: np.ndarray
    decoy: np.ndarray | None  # the item logged instead where not clicked (-1: the item itself); None when off


def world_for(users: int, items: int, days: int, seed: int, world_config: WorldConfig | None = None) -> World:
    """The world `simulate` with the same arguments uses: rebuild it to let it judge other exposures (A/B)."""
    # without an explicit world config the category tree follows the catalogue size
    if world_config is None:
        return World(WorldConfig.scaled(users, items), days, seed)
    return World(replace(world_config, n_users=users, n_items=items), days, seed)


def simulate(
    users: int,
    items: int,
    days: int,
    seed: int,
    out_dir: str | Path,
    *,
    world_config: WorldConfig | None = None,
    feed: FeedConfig | None = None,
    compress: bool = False,
    progress: bool = True,
    world: World | None = None,
) -> SimSummary:
    """Build a seeded world, simulate `days` of feed traffic and write events, items and users to out_dir.

    Pass `world` (from `world_for` with the same arguments) to keep it: the simulation advances its
    state (satisfied interests), and a closed loop can go on from where the log ends.
    """
    started = time.perf_counter()
    world = world if world is not None else world_for(users, items, days, seed, world_config)
    feed = feed or FeedConfig()
    log = LogDir(Path(out_dir))
    log.root.mkdir(parents=True, exist_ok=True)
    files = (log.target("events", compress), log.target("items", compress), log.target("users", compress))
    for stale in (log.target(stem, not compress) for stem in ("events", "items", "users")):
        stale.unlink(missing_ok=True)  # a previous run with the other compression would make the log ambiguous
    write_items(files[1], world.item_records())
    write_users(files[2], world.user_records())
    counts = {"impressions": 0, "clicks": 0, "stale": 0, "decoys": 0}
    with EventWriter(files[0]) as writer:
        # decoys have their own stream: switching them on changes no other draw
        run = _Run(world, feed, np.random.default_rng([seed, 1]), writer, counts, np.random.default_rng([seed, 4]))
        for day in progress_bar(range(days), desc="simulating days", unit="day", show=progress):
            run.day(day)
        run.finish()
    return SimSummary(
        out_dir=log.root,
        users=users,
        items=items,
        days=days,
        seed=seed,
        events=counts["impressions"] + counts["clicks"],
        impressions=counts["impressions"],
        clicks=counts["clicks"],
        stale_impressions=counts["stale"],
        seconds=time.perf_counter() - started,
        files=files,
        decoy_impressions=counts["decoys"],
    )


class _Run:
    """One simulation in progress: the feed memory, the id counters and the rows not yet written."""

    def __init__(
        self, world: World, feed: FeedConfig, rng: np.random.Generator, writer: EventWriter, counts: dict[str, int],
        decoy_rng: np.random.Generator,
    ) -> None:
        self.world, self.feed, self.rng, self.writer, self.counts = world, feed, rng, writer, counts
        self.decoy_rng = decoy_rng
        n, k = world.users.leaf.shape
        self.memory = _FeedMemory(
            clicks=np.full((n, feed.history_len), -1), n_clicks=np.zeros(n, dtype=np.int64),
            interest_clicked=np.zeros((n, k), dtype=bool),
        )
        self.user_ids = world.user_id(np.arange(n)).tolist()
        self.item_ids = world.item_id(np.arange(world.catalogue.n_items)).tolist()
        cat = world.catalogue
        self.leaf_cdf = cat.leaf_cdf(feed.leaf_focus)
        self.explore = RowSampler(world.prior)
        # row t: uniform over the leaves of top category t
        self.siblings = RowSampler((cat.leaf_top[None, :] == np.arange(cat.leaf_top.max() + 1)[:, None]).astype(float))
        self.next_request = 0
        self.next_event = 0
        self.carry: np.ndarray | None = None  # rows past midnight, written with the next day

    def day(self, day: int) -> None:
        starts = self._session_starts(day)
        batches = []
        for users, ts in starts:
            batch = self._session_round(users, ts)
            self._remember_clicks(batch)
            batches.append(batch)
        self._write_until((day + 1) * DAY_MS + self.world.cfg.start_ms, batches)

    def finish(self) -> None:
        self._write_until(None, [])

    # ---------------------------------------------------------------------------------- visits

    def _session_starts(self, day: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per round r, the users with an r-th session today and its start time; rounds are in time order per user."""
        rng, feed, world = self.rng, self.feed, self.world
        n = world.users.n_users
        active = np.flatnonzero(rng.random(n) < np.minimum(1.0, feed.active_day_prob * world.users.activity))
        sessions = np.minimum(1 + rng.poisson(feed.extra_sessions * world.users.activity[active]), MAX_SESSIONS)
        # distinct hours per user-day: Gumbel top-k over the hour weights, the first `sessions` of them
        keys = np.log(HOUR_WEIGHTS)[None, :] - np.log(-np.log(rng.random((len(active), 24))))
        top = np.argsort(-keys, axis=1)[:, :MAX_SESSIONS]
        unused = np.arange(MAX_SESSIONS)[None, :] >= sessions[:, None]
        hours = np.sort(np.where(unused, 99, top), axis=1)  # the user's session hours, earliest first
        day_ms = world.cfg.start_ms + day * DAY_MS
        rounds = []
        for r in range(int(sessions.max(initial=0))):
            has = sessions > r
            ts = day_ms + hours[has, r] * HOUR_MS + rng.integers(0, 20 * 60_000, int(has.sum()))
            rounds.append((active[has], ts))
        return rounds

    # ---------------------------------------------------------------------------------- one round

    def _session_round(self, users: np.ndarray, start_ts: np.ndarray) -> _Batch:
        """One session for each of `users` (distinct), starting at start_ts; the world as of that start."""
        rng, feed = self.rng, self.feed
        pages = np.clip(np.round(rng.gamma(2.0, feed.pages_per_session / 2.0, len(users))), 1, feed.max_pages)
        pages = pages.astype(np.int64)
        slots_per_session = pages * feed.page_size
        session = np.repeat(np.arange(len(users)), slots_per_session)
        slot_user = users[session]
        first_slot = np.repeat(np.cumsum(slots_per_session) - slots_per_session, slots_per_session)
        slot_in_session = np.arange(len(session)) - first_slot
        position = slot_in_session % feed.page_size
        page_number = np.repeat(np.cumsum(pages) - pages, slots_per_session) + slot_in_session // feed.page_size
        item, stale, decoy = self._candidates_to_slots(users, start_ts, slots_per_session, session)
        mood = self.world.session_engagement(len(users), rng)[session]
        p = self.world.click_prob_pairs(slot_user, item, start_ts[session], position, mood)
        clicked = rng.random(len(item)) < p
        # time moves on by a scroll per impression plus a dwell after each click
        step = rng.exponential(feed.scroll_ms, len(item)) + clicked * rng.exponential(feed.dwell_ms, len(item))
        step = np.minimum(step, 300_000)  # never a 10-minute gap inside a session
        elapsed = np.cumsum(step) - step
        elapsed -= np.repeat(elapsed[np.cumsum(slots_per_session) - slots_per_session], slots_per_session)
        ts = start_ts[session] + elapsed.astype(np.int64)
        click_ts = ts + 500 + rng.integers(0, 2_500, len(item))
        request = self.next_request + page_number
        self.next_request += int(pages.sum())
        return _Batch(slot_user, item, ts, request, position, clicked, click_ts, stale, decoy)

    def _candidates_to_slots(
        self, users: np.ndarray, start_ts: np.ndarray, slots_per_session: np.ndarray, session: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Recall a candidate set per session, then fill its slots from it (pages re-rank the same set);
        returns each slot's item, whether it is stale, and its decoy (None when `unclicked_noise` is off)."""
        n_candidates = np.maximum(1, np.ceil(slots_per_session * self.feed.candidate_ratio)).astype(np.int64)
        candidate_user = np.repeat(users, n_candidates)
        item, stale = self._fill_slots(candidate_user, np.repeat(start_ts, n_candidates))
        first = np.cumsum(n_candidates) - n_candidates
        pick = first[session] + (self.rng.random(len(session)) * n_candidates[session]).astype(np.int64)
        decoy = self._decoys(len(item))
        return item[pick], stale[pick], decoy[pick] if decoy is not None else None

    def _decoys(self, n_candidates: int) -> np.ndarray | None:
        """Per candidate, the popular item logged in its place when it is not clicked, or -1 (module doc)."""
        noise = self.feed.unclicked_noise
        if noise <= 0:  # off: no draw at all, so the log stays byte-identical to one written before the setting
            return None
        garbled = self.decoy_rng.random(n_candidates) < noise
        decoys = self.world.catalogue.sample_popular(n_candidates, self.decoy_rng)
        return np.where(garbled, decoys, -1)

    def _fill_slots(self, slot_user: np.ndarray, slot_ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Choose an item for every slot from the five sources; returns items and the stale-slot mask."""
        rng, feed = self.rng, self.feed
        shares = [feed.history_share, feed.stale_exposure, feed.intent_share, feed.popular_share]
        source = rng.choice(5, size=len(slot_user), p=[*shares, 1.0 - sum(shares)])
        history = self._history_leaves(slot_user)
        stale = np.where(source == STALE, self._stale_leaves(slot_user, slot_ts), -1)
        # fallbacks: stale -> history -> explore; intent -> explore
        history = np.where((source == HISTORY) | ((source == STALE) & (stale < 0)), history, -1)
        intent = np.where(source == INTENT, self._intent_leaves(slot_user, slot_ts), -1)
        leaf = self._explore_leaves(slot_user)
        for chosen in (intent, history, stale):
            leaf = np.where(chosen >= 0, chosen, leaf)
        item = self.world.catalogue.sample_in_leaf(leaf, rng, self.leaf_cdf)
        popular = (source == POPULAR) | (item < 0)
        item[popular] = self.world.catalogue.sample_popular(int(popular.sum()), rng)
        return item, (stale >= 0) & ~popular

    def _intent_leaves(self, slot_user: np.ndarray, slot_ts: np.ndarray) -> np.ndarray:
        """Leaf of one of the user's active interests per slot (by interest weight), -1 without any."""
        users, first, row = np.unique(slot_user, return_index=True, return_inverse=True)
        ts = slot_ts[first]  # a user has one session in a round, so one time
        weight = self.world.interest_weights(users, ts) * self.world.active_mask(users, ts)
        k = RowSampler(weight).sample(row, self.rng)
        return np.where(k >= 0, self.world.users.leaf[users[row], np.maximum(k, 0)], -1)

    def _explore_leaves(self, slot_user: np.ndarray) -> np.ndarray:
        return self.explore.sample(self.world.users.segment()[slot_user], self.rng)

    def _history_leaves(self, slot_user: np.ndarray) -> np.ndarray:
        """Leaf of a random remembered click per slot (-1 without any), sometimes moved to a sibling leaf."""
        rng, mem, cat = self.rng, self.memory, self.world.catalogue
        remembered = np.minimum(mem.n_clicks[slot_user], self.feed.history_len)
        pick = (rng.random(len(slot_user)) * remembered).astype(np.int64)
        item = np.where(remembered > 0, mem.clicks[slot_user, pick], -1)
        leaf = np.where(item >= 0, cat.item_leaf[np.maximum(item, 0)], -1)
        sibling = (rng.random(len(slot_user)) < self.feed.sibling_share) & (leaf >= 0)
        leaf[sibling] = self.siblings.sample(self.world.catalogue.leaf_top[leaf[sibling]], rng)
        return leaf

    def _stale_leaves(self, slot_user: np.ndarray, slot_ts: np.ndarray) -> np.ndarray:
        """Leaf of a random clicked-then-faded interest per slot, -1 for users without one."""
        users, first, row = np.unique(slot_user, return_index=True, return_inverse=True)
        ts = slot_ts[first]  # a user has one session in a round, so one time
        leaf = self.world.users.leaf[users]
        active = self.world.active_mask(users, ts)
        # a leaf that came back as a new active interest is not stale
        revived = ((leaf[:, :, None] == leaf[:, None, :]) & active[:, None, :]).any(axis=2)
        stale = self.world.faded_mask(users, ts) & self.memory.interest_clicked[users] & ~revived
        k = RowSampler(stale.astype(float)).sample(row, self.rng)
        return np.where(k >= 0, leaf[row, np.maximum(k, 0)], -1)

    def _remember_clicks(self, batch: _Batch) -> None:
        """Append this round's clicks to each user's ring buffer and mark the interests they hit."""
        mem, users, cat = self.memory, self.world.users, self.world.catalogue
        idx = np.flatnonzero(batch.clicked)
        if len(idx) == 0:
            return
        idx = idx[np.lexsort((batch.click_ts[idx], batch.user[idx]))]
        user, item = batch.user[idx], batch.item[idx]
        first = np.searchsorted(user, user)  # user is sorted: index of each user's first click in the round
        rank = np.arange(len(user)) - first
        mem.clicks[user, (mem.n_clicks[user] + rank) % self.feed.history_len] = item
        np.add.at(mem.n_clicks, user, 1)
        started = users.start_ms[user] <= batch.click_ts[idx][:, None]
        hit = (users.leaf[user] == cat.item_leaf[item][:, None]) & started
        rows, cols = np.nonzero(hit)
        mem.interest_clicked[user[rows], cols] = True
        order = np.argsort(batch.click_ts[idx], kind="stable")
        self.world.observe_clicks(user[order], item[order], batch.click_ts[idx][order])

    # ---------------------------------------------------------------------------------- output

    def _write_until(self, end_ms: int | None, batches: list[_Batch]) -> None:
        """Write every row before end_ms (all when None) in time order; keep later rows for the next day."""
        parts = [self.carry] if self.carry is not None else []
        for b in batches:
            c = b.clicked
            parts.append(np.stack([b.ts, b.user, _logged_items(b), np.zeros_like(b.ts), b.request, b.position]))
            parts.append(np.stack([b.click_ts[c], b.user[c], b.item[c], np.ones(c.sum(), dtype=np.int64),
                                   b.request[c], b.position[c]]))
            self.counts["stale"] += int(b.stale.sum())
            self.counts["decoys"] += int(((b.decoy >= 0) & ~c).sum()) if b.decoy is not None else 0
        if not parts:
            return
        rows = np.concatenate(parts, axis=1)
        # time, then user, then impression before click: a deterministic order for equal stamps
        rows = rows[:, np.lexsort((rows[3], rows[1], rows[0]))]
        cut = rows.shape[1] if end_ms is None else int(np.searchsorted(rows[0], end_ms))
        self.carry = rows[:, cut:] if cut < rows.shape[1] else None
        self._write_rows(rows[:, :cut])

    def _write_rows(self, rows: np.ndarray) -> None:
        n = rows.shape[1]
        if n == 0:
            return
        ts, user, item, kind, request, position = (r.tolist() for r in rows)
        uid, iid = self.user_ids, self.item_ids
        kinds = ("impression", "click")
        first = self.next_event
        self.writer.write_columns(
            ts, [uid[u] for u in user], [iid[i] for i in item], [kinds[k] for k in kind],
            [f"e{first + j}" for j in range(n)], [f"r{q}" for q in request], position,
        )
        self.next_event += n
        clicks = int(rows[3].sum())
        self.counts["clicks"] += clicks
        self.counts["impressions"] += n - clicks


def _logged_items(batch: _Batch) -> np.ndarray:
    """The item each impression row records: the shown item, or its decoy where one stands in unclicked."""
    if batch.decoy is None:
        return batch.item
    return np.where(~batch.clicked & (batch.decoy >= 0), batch.decoy, batch.item)
