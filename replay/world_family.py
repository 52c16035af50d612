"""The world family: named simulator settings for worlds that differ where real feeds differ (#28).

A result that holds on one simulated world may hold only there: the default world's λ, chosen on it,
cost XDM 10 % HR@50 on a world written by other code. Each member changes the default world's
behaviour along one axis a real feed varies on, and nothing else, so a table per member says which
axis a result depends on:

- catalogue size: 5,000 to 100,000 items with the same users, so clicks per item fall from ~9 to
  under 1 (the category tree scales with the catalogue, `WorldConfig.scaled`);
- interest drift: how fast interests come and go (`interest_life_days`, `satiation_clicks`);
- exposure: how strongly the feed follows the user's past clicks (`history_share`, `stale_exposure`)
  rather than exploring (the rest) or pushing popular items (`popular_share`);
- the unclicked window: what it holds (`unclicked_noise`: nothing of the user), how long it is (short
  sessions of small pages), and whether a user skips some brands of a wanted category (`dislike_brands`).

Every member is the default world's per-user behaviour at `FAMILY_USERS` users and `FAMILY_DAYS`
days, seed `FAMILY_SEED` (not the default world's 1: none of its settings were chosen on these), sized
to build and train each model in minutes on 2 cores. `xdm simulate --family NAME --out DIR` writes
one; --users / --items / --days / --seed and further --world / --feed settings apply on top.
docs/worlds.md says why each member matters and what its unclicked window carries (measured on
validation days with `xdm stats --window-signal`).
"""

from __future__ import annotations

from dataclasses import dataclass

from replay.simulate import FeedConfig
from replay.world import WorldConfig

FAMILY_USERS = 3000  # ~55 k training samples, ~700 test users: minutes per model on 2 cores
FAMILY_ITEMS = 5000  # the default world's catalogue
FAMILY_DAYS = 10  # the default world's days: long-term windows near Table 1's
FAMILY_SEED = 28  # one seed for the whole family, none the defaults were tuned on


@dataclass(frozen=True)
class FamilyWorld:
    """One member: its size and its settings as `xdm simulate` options (`FIELD=VALUE` items)."""

    name: str
    differs: str  # what it changes, in a line
    users: int = FAMILY_USERS
    items: int = FAMILY_ITEMS
    days: int = FAMILY_DAYS
    seed: int = FAMILY_SEED
    world: tuple[str, ...] = ()  # WorldConfig settings (--world)
    feed: tuple[str, ...] = ()  # FeedConfig settings (--feed)

    def world_config(self, users: int | None = None, items: int | None = None) -> WorldConfig:
        """The member's WorldConfig, its category tree scaled to the catalogue."""
        return WorldConfig.scaled(users or self.users, items or self.items).with_settings(self.world)

    def feed_config(self) -> FeedConfig:
        return FeedConfig().with_settings(self.feed)

    def command(self, out: str) -> str:
        """The `xdm simulate` line that writes this member without --family."""
        options = [f"--users {self.users}", f"--items {self.items}", f"--days {self.days}", f"--seed {self.seed}"]
        options += [f"--world {s}" for s in self.world] + [f"--feed {s}" for s in self.feed]
        return f"xdm simulate {' '.join(options)} --out {out}"


FAMILY: dict[str, FamilyWorld] = {w.name: w for w in (
    FamilyWorld("reference", "the default world's behaviour at the family's size: what every member is read against"),
    FamilyWorld("catalogue-20k", "20,000 items: ~4x fewer clicks per item", items=20_000),
    FamilyWorld("catalogue-50k", "50,000 items: ~10x fewer clicks per item, most items clicked once or never",
                items=50_000),
    FamilyWorld("catalogue-100k", "100,000 items: under one click per item", items=100_000),
    FamilyWorld("fast-drift", "interests last ~1.5 days and are satisfied after ~3 clicks (default 5 and 6)",
                world=("interest_life_days=1.5", "satiation_clicks=3")),
    FamilyWorld("no-drift", "interests never fade nor get satisfied within the log: no lost interest to skip",
                world=("interest_life_days=1000", "satiation_clicks=0")),
    FamilyWorld("exposure-follows-clicks", "60 % of the feed recalls items like the user's past clicks "
                "(default 15 %), 20 % from lost interests (default 40 %)",
                feed=("history_share=0.6", "stale_exposure=0.2")),
    FamilyWorld("exposure-random", "no slot follows past clicks: 85 % explore the profile prior, 10 % live intent",
                feed=("history_share=0", "stale_exposure=0")),
    FamilyWorld("exposure-popular", "half the feed is globally popular items (default 5 %)",
                feed=("popular_share=0.5", "stale_exposure=0.15", "history_share=0.1")),
    FamilyWorld("no-signal-window", "every unclicked impression is logged as a random popular item: the "
                "window says nothing about the user", feed=("unclicked_noise=1",)),
    FamilyWorld("short-sessions", "sessions of ~8 pages of 6 items (default ~25 of 20), five times as many: "
                "unclicked windows of ~40 behaviours (default ~77), short-term windows of ~4 (default ~12)",
                users=2 * FAMILY_USERS,  # a third of the clicks per user: twice the users keep the samples near
                feed=("page_size=6", "pages_per_session=8", "active_day_prob=0.6", "extra_sessions=1")),
    FamilyWorld("dislikes", "each user skips ~8 brands of their own interests whatever is shown: a signal within "
                "the leaf", world=("dislike_brands=8", "dislike_depth=1")),
)}


def family_world(name: str) -> FamilyWorld:
    """The member called `name`; ValueError listing the members otherwise."""
    if name not in FAMILY:
        raise ValueError(f"no world {name!r} in the family; one of {', '.join(FAMILY)}")
    return FAMILY[name]
