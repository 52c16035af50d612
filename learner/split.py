"""Which offline split of which log: the one spec that train, evaluate, ablate, tune and the bench scripts
build their samples from (learner/data.py builds it; its module docstring states the protocol).

A `Split` names everything that decides its samples (the log, the window and sample rules, the test days,
the held-out days, the test anchor) and where built splits are kept; it owns the key they are kept
under, so an entry point that gains a setting gains it here once instead of in every signature.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from xdm.errors import XdmError
from xdm.log_format import LogDir
from xdm.stream_rules import SampleRules, WindowRules

DEFAULT_TEST_DAYS = 2.0
TEST_ANCHORS = ("cut", "first_click")  # where a test user's windows are taken (learner/data.py)
DEFAULT_TEST_ANCHOR = "first_click"  # the protocol of the README's Table 2
CACHE_VERSION = 1  # bump when the protocol or the stored layout changes


class OfflineDataError(XdmError):
    """The log cannot give an offline split (too short, no test users ...); the message says why."""


def anchor_entry(test_anchor: str) -> dict[str, str]:
    """The test anchor as summaries and cache keys record it."""
    # "cut" is left unnamed, so the cache keys and row records written before the anchor existed still match
    return {"test_anchor": test_anchor} if test_anchor != "cut" else {}


def recorded_test_anchor(summary: dict[str, Any]) -> str:
    """The test anchor of a split's summary (or a run's record of it); one that names none was cut."""
    return summary.get("test_anchor", "cut")


def test_windows_taken(summary: dict[str, Any], who: str = "test user") -> str:
    """Where a split's test windows were taken, in words for reports."""
    if recorded_test_anchor(summary) == "cut":
        return f"each {who}'s windows at the cut"
    return f"each {who}'s windows at their first click after the cut"


@dataclass(frozen=True)
class Split:
    """One time split of the log in `data_dir`: training samples before the cut, test users after it."""

    data_dir: Path
    windows: WindowRules = field(default_factory=WindowRules)
    samples: SampleRules = field(default_factory=SampleRules)
    test_days: float = DEFAULT_TEST_DAYS  # the log's last days are the test period
    holdout_days: float = 0.0  # last days of the log left out before anything else (a validation split when > 0)
    test_anchor: str = DEFAULT_TEST_ANCHOR  # where the test windows are taken (TEST_ANCHORS)
    # where built splits are kept for reuse (None: not kept); not part of what the split is
    cache_dir: Path | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir))  # accept str too
        # "" is how the command line says "no cache"; Path("") would be the working directory
        object.__setattr__(self, "cache_dir", Path(self.cache_dir) if self.cache_dir else None)
        if self.test_days <= 0:
            raise OfflineDataError(f"test_days must be positive, got {self.test_days}")
        if self.holdout_days < 0:
            raise OfflineDataError(f"holdout_days must not be negative, got {self.holdout_days}")
        if self.test_anchor not in TEST_ANCHORS:
            raise OfflineDataError(f"test_anchor must be one of {', '.join(TEST_ANCHORS)}, "
                                   f"got {self.test_anchor!r}")

    def validation(self) -> Split:
        """The split settings are chosen on: this split's test period held out unread, the `test_days`
        before it scored (learner/tuning.py)."""
        return replace(self, holdout_days=self.test_days)

    @classmethod
    def of_run(cls, run: dict[str, Any], data_dir: str | Path | None = None,
               cache_dir: str | Path | None = None) -> Split:
        """The split a run (its run.json) was trained on, over `data_dir` if given; a run recorded without a
        holdout had none, one without a test anchor was scored at the cut."""
        data = run["data"]
        return cls(data_dir or data["data_dir"], WindowRules(**run["window_rules"]),
                   SampleRules(**run["sample_rules"]), data["test_days"], data.get("holdout_days", 0.0),
                   recorded_test_anchor(data), cache_dir)

    def cache_key(self) -> str:
        """What a built split is kept under: the log files' size and mtime, the rules and the settings."""
        logdir = LogDir(self.data_dir)
        files = [logdir.events, logdir.items, logdir.users]
        stamp = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files if p is not None]
        key = json.dumps({"v": CACHE_VERSION, "dir": str(self.data_dir.resolve()), "files": stamp,
                          "windows": asdict(self.windows), "samples": asdict(self.samples),
                          "test_days": self.test_days,
                          # only when set, so the splits cached before holdouts existed keep their keys
                          **({"holdout_days": self.holdout_days} if self.holdout_days else {}),
                          **anchor_entry(self.test_anchor)},
                         sort_keys=True)
        return hashlib.blake2b(key.encode(), digest_size=10).hexdigest()

    def cache_path(self) -> Path | None:
        """The file the built split is kept in, or None without a cache folder."""
        return self.cache_dir / f"{self.cache_key()}.pkl" if self.cache_dir is not None else None
