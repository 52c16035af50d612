"""The settings of the window and labelling rules: the `windows` and `samples` sections of the config.

`stream/windows.py` and `stream/samples.py` apply them, in the worker, the offline trainer and `xdm stats`
alike; the settings live in the ground so that the config (and whatever reads it) does not import the rules.
"""

from __future__ import annotations

from dataclasses import dataclass

from xdm.time_units import DAY_MS


@dataclass(frozen=True)
class WindowRules:
    session_gap_ms: int = 600_000  # a gap longer than this (ms) between two clicks starts a new session
    session_max: int = 50  # most clicks in one session; one more starts a new session
    long_term_ms: int = 7 * DAY_MS  # long-term = clicks this long (ms) before the session start
    long_term_max: int = 100  # most long-term clicks kept (newest)
    unclicked_ms: int = 3 * DAY_MS  # unclicked span (ms) before the snapshot time, §4.1 rule 1
    unclicked_min_exposures: int = 2  # impressions needed in that span: "more than k=1 times", §4.1 rule 2
    unclicked_max: int = 100  # most unclicked items kept (latest impressions), §4.1
    lateness_ms: int = 60_000  # how far (ms) an event may trail the user's newest event and still count
    dedup_max: int = 1024  # most event ids remembered per user for redelivery checks
    prune_every_ms: int = 600_000  # watermark progress (ms) between two prunes of old state

    def __post_init__(self) -> None:
        if self.session_max < 1 or self.dedup_max < 1:
            raise ValueError("windows.session_max and windows.dedup_max must be at least 1")
        for name, value in vars(self).items():
            if value < 0:
                raise ValueError(f"windows.{name} must not be negative, got {value}")


@dataclass(frozen=True)
class SampleRules:
    every_m_clicks: int = 1  # one click in m (by event-id hash) anchors a sample
    n_labels: int = 5  # next k clicked items taken as labels, k = 5 (§4.3)
    expire_ms: int = DAY_MS  # labels must all fall within this span (ms) after the anchor

    def __post_init__(self) -> None:
        if self.every_m_clicks < 1 or self.n_labels < 1 or self.expire_ms < 0:
            raise ValueError("samples.every_m_clicks and samples.n_labels must be at least 1, "
                             "samples.expire_ms not negative")
