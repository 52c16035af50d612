"""The replay report from a scores file a run could have written: warm-up days left out, the learner
gate's figures and the per-arm settings stated, every figure finite."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from replay.report import METRICS, ReportError, build_report
from xdm.time_units import DAY_MS

START = 1_700_000_000_000


def write_run(out: Path, warm_days: float = 0.0, gate: dict | None = None, paired: bool = False) -> None:
    rng = np.random.default_rng(3)
    rows = []
    for day in range(4):
        for user in range(60):
            for arm in ("sdm", "xdm") if paired else ("xdm" if user % 2 else "sdm",):
                hit = float(rng.random() < (0.5 if arm == "xdm" else 0.3))
                row = {"user_id": f"u{user}", "ts_ms": START + day * DAY_MS + user * 60_000, "arm": arm,
                       "version": day + 1, "fallback": False}
                row |= {m: hit * (0.2 if m.startswith("mrr") or m.startswith("f1") else 1.0) for m in METRICS}
                rows.append(row)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    state = {"events_sent": 1, "log_start_ms": START - 3_600_000,
             "options": {"warm_days": warm_days, "max_learner_lag": 2000, "paired": paired}, "learner_gate": gate}
    (out / "state.json").write_text(json.dumps(state))


def test_warm_up_days_of_the_run_are_left_out_and_said(tmp_path: Path):
    write_run(tmp_path, warm_days=2.0, gate={"waits": 7, "wait_s": 12.5, "max_lag_seen": 3456})
    report = build_report(tmp_path)
    # the log starts an hour before the first request: the 2 warm-up days end just before the scores of day 2
    assert report["requests"] == 2 * 60 and report["warm_days"] == 2.0
    summary = (tmp_path / "summary.md").read_text()
    assert "first 2 days are left out" in summary
    assert "waited 7 times, 12 s in all; the largest lag found was 3,456 samples" in summary
    assert "Every arm's learner ran with the same settings." in summary
    for arm in report["arms"].values():
        assert all(math.isfinite(arm[m]["mean"]) for m in METRICS)
    (lift,) = [c for c in report["comparisons"] if c["metric"] == "hr50"]
    assert lift["lift"] > 0 and lift["candidate"] == "xdm"


def test_warm_days_can_be_chosen_when_the_report_is_rebuilt(tmp_path: Path):
    write_run(tmp_path)
    assert build_report(tmp_path)["requests"] == 240
    assert build_report(tmp_path, warm_days=3)["requests"] == 60
    summary = (tmp_path / "summary.md").read_text()
    assert "did not wait for the learners" in summary
    with pytest.raises(ReportError, match="no scored request after 9 warm-up days"):
        build_report(tmp_path, warm_days=9)


def test_a_paired_run_is_compared_user_by_user(tmp_path: Path):
    write_run(tmp_path, paired=True)
    report = build_report(tmp_path)
    assert report["paired"] and report["requests"] == 480
    assert report["arms"]["xdm"]["users"] == report["arms"]["sdm"]["users"] == 60
    (lift,) = [c for c in report["comparisons"] if c["metric"] == "hr50"]
    assert lift["significant"] and lift["low"] > 0
    assert "paired: every sampled request was answered by every arm" in (tmp_path / "summary.md").read_text()
