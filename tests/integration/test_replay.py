"""Replay through the live system as an A/B experiment: the report is complete and finite, and an A/A
pair of arms (same model) shows no significant difference."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from replay.abstats import compare_means
from replay.replayer import ReplayOptions
from replay.report import METRICS, load_scores, per_user
from replay.run import replay_embedded


@pytest.mark.timeout(300)
def test_replay_with_three_arms_writes_a_finite_report_and_aa_is_not_significant(tmp_path: Path, test_config, tiny_log):
    out = tmp_path / "report"
    opts = ReplayOptions(slice_ms=90 * 60_000, eval_fraction=0.3, seed=4)
    run = replay_embedded(test_config, "test", tiny_log, out, "xdm:34,sdm:33,xdm_twin:33", opts, progress_bar=False)

    for name in ("scores.jsonl", "report.json", "summary.md", "hr50.png", "mrr50.png", "state.json"):
        assert (out / name).exists(), name
    report = json.loads((out / "report.json").read_text())
    assert set(report["arms"]) == {"xdm", "sdm", "xdm_twin"} and report["baseline"] == "sdm"
    for arm, figures in report["arms"].items():
        for metric in METRICS:
            assert all(math.isfinite(figures[metric][k]) for k in ("mean", "low", "high")), (arm, metric)
    assert all(math.isfinite(c["p_value"]) for c in report["comparisons"])
    assert run.progress.errors == 0 and run.progress.scored > 50
    assert "| HR@50 |" in (out / "summary.md").read_text()

    # A/A: the twin arm runs the same model; it must not differ significantly from xdm
    rows = [r for r in load_scores(out) if not r["fallback"]]
    for metric in ("hr50", "mrr50"):
        values = per_user(rows, metric)
        c = compare_means(values["xdm"], values["xdm_twin"], ("xdm", "xdm_twin"))
        assert not c.significant, (metric, c)


@pytest.mark.timeout(300)
def test_closed_loop_reports_ctr_per_arm_from_the_events_it_sent(tmp_path: Path, test_config):
    from replay.closed_loop import ClosedLoopOptions
    from replay.run import closed_loop_embedded

    out = tmp_path / "closed"
    opts = ClosedLoopOptions(users=80, items=400, warm_days=3, ab_days=1, pages=3, seed=2)
    report = closed_loop_embedded(test_config, "test", out, "xdm:50,sdm:50", opts, progress_bar=False)
    assert {"closed_loop.json", "closed_loop.md", "ctr.png"} <= {p.name for p in out.iterdir()}
    assert set(report["arms"]) == {"xdm", "sdm"}
    for arm in report["arms"].values():
        assert arm["impressions"] > 0 and 0 <= arm["low"] <= arm["ctr"] <= arm["high"] <= 1
    (comparison,) = report["comparisons"]
    assert comparison["baseline"] == "sdm" and math.isfinite(comparison["p_value"])
