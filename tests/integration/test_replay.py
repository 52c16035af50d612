"""Replay through the live system as an A/B experiment: the report is complete and finite, and an A/A
pair of arms (same model) shows no significant difference."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from replay.abstats import compare_means
from replay.replayer import ReplayOptions
from replay.report import METRICS, build_report, load_scores
from replay.run import replay_embedded


@pytest.mark.timeout(300)
def test_replay_with_three_arms_writes_a_finite_report_and_aa_is_not_significant(tmp_path: Path, test_config, tiny_log):
    out = tmp_path / "report"
    opts = ReplayOptions(slice_ms=90 * 60_000, eval_fraction=0.3, seed=4, warm_days=1.0)
    # The log's first ~3.6 days (a warm-up day, then scored ones) are enough: the workers' pace bounds the
    # run, and only the A/A pair needs many users, so it gets most of them (30, split 16/14 by the hash)
    run = replay_embedded(test_config, "test", tiny_log, out, "xdm:50,sdm:20,xdm_twin=xdm:30", opts,
                          progress_bar=False, limit_events=40_000)

    for name in ("scores.jsonl", "report.json", "summary.md", "hr50.png", "mrr50.png", "state.json"):
        assert (out / name).exists(), name
    report = json.loads((out / "report.json").read_text())
    assert set(report["arms"]) == {"xdm", "sdm", "xdm_twin"} and report["baseline"] == "sdm"
    for arm, figures in report["arms"].items():
        for metric in METRICS:
            assert all(math.isfinite(figures[metric][k]) for k in ("mean", "low", "high")), (arm, metric)
    assert all(math.isfinite(c["p_value"]) for c in report["comparisons"])
    assert run.progress.errors == 0 and run.progress.scored > 50
    summary = (out / "summary.md").read_text()
    assert "| HR@50 |" in summary and "Every arm's learner ran with the same settings." in summary
    state = json.loads((out / "state.json").read_text())  # the first day trained the arms, unscored
    assert min(r["ts_ms"] for r in load_scores(out)) >= state["log_start_ms"] + 86_400_000
    assert report["warm_days"] == 1.0 and "first 1 days are left out" in summary
    gate = report["learner_gate"]  # scoring waited for both learners (xdm_twin shares xdm's)
    assert gate["max_learner_lag"] == opts.max_learner_lag and gate["max_lag_seen"] > 0
    assert "within 2,000 samples of the workers" in summary

    # A/A: the twin arm is served by the same learner as xdm, so a user's answers do not depend on which
    # of the two arms holds them, and re-drawing the sticky assignment of their pooled users is the same
    # as re-running the replay with another assignment seed. Across 200 such seeds the test must flag a
    # difference about alpha = 5 % of the time ("no significant difference in most seeds").
    rows = load_scores(out)
    pooled = {**per_user_values(rows, "xdm"), **per_user_values(rows, "xdm_twin")}
    users = sorted(pooled)
    values = np.array([pooled[u] for u in users])
    n_a = len(per_user_values(rows, "xdm"))
    flagged = 0
    for seed in range(200):
        order = np.random.default_rng(seed).permutation(len(users))
        flagged += compare_means(values[order[:n_a]], values[order[n_a:]], ("a", "b"), n_boot=50).significant
    assert len(users) >= 20 and flagged / 200 <= 0.12, flagged


def per_user_values(rows: list[dict], arm: str, metric: str = "hr50") -> dict[str, float]:
    by_user: dict[str, list[float]] = {}
    for r in rows:
        if r["arm"] == arm:
            by_user.setdefault(r["user_id"], []).append(r[metric])
    return {u: float(np.mean(v)) for u, v in by_user.items()}


@pytest.mark.timeout(300)
def test_closed_loop_reports_ctr_per_arm_from_the_events_it_sent(tmp_path: Path, test_config):
    from replay.closed_loop import ClosedLoopOptions
    from replay.run import closed_loop_embedded

    out = tmp_path / "closed"
    # one warm-up day trains both learners (the assertions ask for equal, non-zero warm-up samples, not a
    # good model); the workers' pace over the warm-up log bounds the run
    opts = ClosedLoopOptions(users=80, items=400, warm_days=1, ab_days=1, pages=3, seed=2)
    report = closed_loop_embedded(test_config, "test", out, "xdm:50,sdm:50", opts, progress_bar=False,
                                  learner_sets=("sdm:learner.rehearsal_steps=1",))
    assert {"closed_loop.json", "closed_loop.md", "ctr.png", "learner_settings.json"} <= {p.name for p in out.iterdir()}
    assert report["learner_settings"] == {"sdm": {"learner.rehearsal_steps": "1"}}
    summary = (out / "closed_loop.md").read_text()
    assert "sdm: learner.rehearsal_steps=1" in summary and "Before each A/B page every learner was within" in summary
    assert report["learner_gate"]["waits"] >= 0 and report["options"]["max_learner_lag"] == 2000
    assert set(report["arms"]) == {"xdm", "sdm"} and report["failed_requests"] == 0
    warm_up = report["warm_up"]  # the A/B days began with both learners through the same warm-up samples
    assert warm_up["learners_idle"] and set(warm_up["trained_samples"]) == {"xdm", "sdm"}
    assert len(set(warm_up["trained_samples"].values())) == 1 and min(warm_up["trained_samples"].values()) > 0
    for arm in report["arms"].values():
        assert arm["impressions"] > 0 and 0 <= arm["low"] <= arm["ctr"] <= arm["high"] <= 1
    (comparison,) = report["comparisons"]
    assert comparison["baseline"] == "sdm" and math.isfinite(comparison["p_value"])


@pytest.mark.timeout(300)
def test_paired_replay_asks_every_arm_for_every_request_and_a_twin_arm_matches(tmp_path: Path, test_config, tiny_log):
    out = tmp_path / "paired"
    # The log's first ~2.4 days, with twice the whole log's share of requests asked: ~480 requests of 35
    # users, over a hundred of them answered by the model (the others fall back while a user's windows
    # hold no click yet), which is what the twin arm's match is about
    opts = ReplayOptions(slice_ms=90 * 60_000, eval_fraction=0.4, seed=5, paired=True)
    run = replay_embedded(test_config, "test", tiny_log, out, "xdm:50,sdm:25,xdm_twin=xdm:25", opts,
                          progress_bar=False, limit_events=25_000)
    rows = load_scores(out)
    by_request: dict[tuple[str, int], set[str]] = {}
    for r in rows:
        by_request.setdefault((r["user_id"], r["ts_ms"]), set()).add(r["arm"])
    assert run.progress.errors == 0 and len(by_request) > 30
    assert all(arms == {"xdm", "sdm", "xdm_twin"} for arms in by_request.values())
    report = json.loads((out / "report.json").read_text())
    users = {a: report["arms"][a]["users"] for a in report["arms"]}
    assert report["paired"] and len(set(users.values())) == 1, users
    # the twin is served by xdm's learner: the same answers, unless a version swap fell between two calls
    against_xdm = build_report(out, baseline="xdm")
    (twin,) = [c for c in against_xdm["comparisons"] if c["metric"] == "hr50" and c["candidate"] == "xdm_twin"]
    assert twin["low"] <= 0 <= twin["high"] and abs(twin["lift"]) < 0.05 and not twin["significant"]
