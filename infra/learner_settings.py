"""Per-arm learner settings: `ARM:learner.FIELD=VALUE`, applied to that arm's learner process only.

An A/B test compares models together with their training recipes, and the best recipe of one model need
not be the best of another (bench/online_rehearsal.py: more rehearsal steps help XDM and hurt SDM). A
global `--set learner.rehearsal_steps=4` would hand one arm a recipe tuned for the other, so experiments
take per-arm values for the `learner` section. Other sections stay global: workers, server and every
learner must agree on topics, windows and the model's shape.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

from xdm.config import Config, apply_overrides
from xdm.errors import ConfigError

SECTION = "learner"
RECORD = "learner_settings.json"  # written next to an experiment's report, read back by the report

LearnerSettings = dict[str, dict[str, str]]  # arm (learner name) -> {"learner.field": value}


def parse_learner_settings(items: tuple[str, ...] | list[str], learners: tuple[str, ...],
                           base: Config) -> LearnerSettings:
    """Parse `ARM:learner.FIELD=VALUE` items; each is checked against the arm names and the config."""
    out: LearnerSettings = {}
    for item in items:
        arm, sep, assignment = item.partition(":")
        key, eq, value = assignment.partition("=")
        arm, key, value = arm.strip(), key.strip(), value.strip()
        if not sep or not eq or not arm or not key:
            raise ConfigError(f"--learner-set expects ARM:learner.FIELD=VALUE, got {item!r}")
        if arm not in learners:
            raise ConfigError(f"--learner-set {item!r}: no learner named {arm!r}; the arms train {', '.join(learners)}")
        if not key.startswith(SECTION + "."):
            raise ConfigError(f"--learner-set {item!r}: only {SECTION}.* keys can differ by arm")
        out.setdefault(arm, {})[key] = value
    for overrides in out.values():
        apply_overrides(base, overrides)  # unknown keys and bad values fail here, before anything starts
    return out


def learner_config(base: Config, settings: Mapping[str, Mapping[str, str]], arm: str) -> Config:
    """The config one arm's learner runs with."""
    return apply_overrides(base, settings.get(arm, {}))


def record(out_dir: Path, settings: LearnerSettings) -> None:
    (Path(out_dir) / RECORD).write_text(json.dumps(settings, indent=2, sort_keys=True))


def recorded(out_dir: Path) -> LearnerSettings:
    """The settings an experiment in out_dir ran with ({} if it predates the record or had none)."""
    path = Path(out_dir) / RECORD
    return json.loads(path.read_text()) if path.exists() else {}


def describe(settings: Mapping[str, Mapping[str, str]]) -> str:
    """One line for a report: which arm trained with what, or that all arms shared one recipe."""
    if not any(settings.values()):
        return "Every arm's learner ran with the same settings."
    parts = [f"{arm}: " + ", ".join(f"{k}={v}" for k, v in sorted(kv.items()))
             for arm, kv in sorted(settings.items()) if kv]
    return "Learner settings by arm (`--learner-set`; the rest shared): " + "; ".join(parts) + "."
