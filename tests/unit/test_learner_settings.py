"""Per-arm learner settings: parsed strictly, applied to one arm's learner only, recorded for the report."""

from __future__ import annotations

from pathlib import Path

import pytest

import infra.stack as stack_module
from infra.learner_settings import describe, learner_config, parse_learner_settings, record, recorded
from infra.stack import Stack
from xdm.config import load_config
from xdm.errors import ConfigError

LEARNERS = ("xdm", "sdm")


@pytest.fixture
def base():
    return load_config("test", env={})


def test_parses_several_settings_per_arm(base):
    settings = parse_learner_settings(["xdm:learner.rehearsal_steps=4", " xdm : learner.lr = 0.05",
                                       "sdm:learner.rehearsal_steps=0"], LEARNERS, base)
    assert settings == {"xdm": {"learner.rehearsal_steps": "4", "learner.lr": "0.05"},
                        "sdm": {"learner.rehearsal_steps": "0"}}
    xdm, sdm = learner_config(base, settings, "xdm"), learner_config(base, settings, "sdm")
    assert (xdm.learner.rehearsal_steps, xdm.learner.lr) == (4, 0.05)
    assert (sdm.learner.rehearsal_steps, sdm.learner.lr) == (0, base.learner.lr)
    assert learner_config(base, settings, "other") == base


@pytest.mark.parametrize("item, message", [
    ("xdm=4", "expects ARM:learner.FIELD=VALUE"),
    ("xdm:learner.rehearsal_steps", "expects ARM:learner.FIELD=VALUE"),
    (":learner.lr=1", "expects ARM:learner.FIELD=VALUE"),
    ("gru:learner.lr=1", "no learner named 'gru'; the arms train xdm, sdm"),
    ("xdm:serving.port=1", "only learner.\\* keys can differ by arm"),
    ("xdm:learner.nope=1", "unknown config key learner.nope"),
    ("xdm:learner.rehearsal_steps=-1", "rehearsal_steps must be >= 0"),
    ("xdm:learner.lr=fast", "learner.lr expects float"),
])
def test_bad_items_are_config_errors_naming_the_problem(base, item, message):
    with pytest.raises(ConfigError, match=message):
        parse_learner_settings([item], LEARNERS, base)


def test_record_round_trip_and_report_line(tmp_path: Path, base):
    assert recorded(tmp_path) == {}
    assert describe({}) == "Every arm's learner ran with the same settings."
    settings = parse_learner_settings(["xdm:learner.rehearsal_steps=4"], LEARNERS, base)
    record(tmp_path, settings)
    assert recorded(tmp_path) == settings
    assert "xdm: learner.rehearsal_steps=4" in describe(recorded(tmp_path))


def test_stack_starts_each_learner_with_its_own_settings(tmp_path: Path, base, monkeypatch):
    started: dict[str, dict[str, str]] = {}

    def capture(name, argv, log_dir, env=None, **_):
        started[name] = env
        return None

    monkeypatch.setattr(stack_module, "start_process", capture)
    stack = Stack(cfg=base, root=tmp_path, profile="test",
                  learner_settings=parse_learner_settings(["xdm:learner.rehearsal_steps=4"], LEARNERS, base))
    stack.start_learner("xdm", "xdm")
    stack.start_learner("sdm", "sdm")
    assert started["learner-xdm"]["XDM_LEARNER__REHEARSAL_STEPS"] == "4"
    assert started["learner-sdm"]["XDM_LEARNER__REHEARSAL_STEPS"] == str(base.learner.rehearsal_steps)
    assert stack.child_env()["XDM_LEARNER__REHEARSAL_STEPS"] == str(base.learner.rehearsal_steps)
