"""Offline training end to end on a tiny simulated world: ablate -> runs, evaluations, table, chart.

No services: this only needs the CPU (about 2 minutes on 2 cores, most of it the module fixture's ablation).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from learner.ablation import ablate
from learner.checkpoint import load_checkpoint
from learner.model import config_for
from learner.offline import TrainSettings, load_evaluation
from learner.split import Split
from learner.trainer import Trainer
from replay.simulate import simulate
from xdm.cli import cli

SMALL_MODEL = {"embed_dim": 16, "n_negatives": 100}
# ~80 steps an epoch here: a warm-up of the default 100 steps would not reach the full learning rate in an epoch
SETTINGS = TrainSettings(epochs=3, batch_size=64, device="cpu", lr_warmup_steps=10)


def split(root: Path, **settings) -> Split:
    """The module's world split, built once and read back from its cache by every later test and CLI call:
    these tests are about rows and runs, not about building splits (tests/unit/test_offline_data.py)."""
    return Split(root / "world", test_days=1.0, cache_dir=root / "splits", **settings)


@pytest.fixture(scope="module")
def ablation(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("offline")
    simulate(300, 800, 6, 3, root / "world")
    report = ablate(split(root), root / "ablation", ("sdm", "xdm"), SETTINGS, SMALL_MODEL,
                    n_boot=300, progress=False)
    return root, report


@pytest.mark.timeout(180)
def test_training_lowers_the_loss_and_beats_random_recall(ablation):
    root, report = ablation
    for variant in ("sdm", "xdm"):
        run = json.loads((root / "ablation" / variant / "run.json").read_text())
        epochs = run["loss_curve"]["epochs"]
        assert epochs[-1]["ce"] < epochs[0]["ce"], f"{variant}: cross-entropy did not fall: {epochs}"
        evaluation = load_evaluation(root / "ablation" / variant)
        hr50 = evaluation["summary"]["hr@50"]
        assert hr50["low"] > evaluation["random_recall"]["hr@50"], (variant, hr50, evaluation["random_recall"])
        assert len(evaluation["users"]) == report["data"]["test_users"] > 0


@pytest.mark.timeout(180)
def test_ablation_writes_table_json_and_chart(ablation):
    root, report = ablation
    out = root / "ablation"
    table = (out / "ablation.md").read_text()
    assert "| SDM |" in table and "| XDM |" in table and "HR@50" in table and "F1@80" in table
    assert "each test user's windows at their first click after the cut" in table
    assert set(report["lift_vs_baseline"]) == {"pop", "xdm"}
    assert (out / "ablation.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "ablation_lift.png").read_bytes()[:4] == b"\x89PNG"
    lift = report["lift_vs_baseline"]["xdm"]["mrr@50"]
    assert lift["low"] <= lift["lift"] <= lift["high"]


@pytest.mark.timeout(180)
def test_offline_run_warm_starts_an_online_trainer(ablation):
    root, _ = ablation
    state = load_checkpoint(str(root / "ablation" / "xdm"), "offline")
    assert state is not None and state["variant"] == "xdm"
    trainer = Trainer(config_for("xdm", **SMALL_MODEL), device="cpu")
    trainer.load_state_dict(state["trainer"])  # what `xdm learn --warm-start RUN` does
    assert trainer.steps > 0 and trainer.vocab.size("item") > 1


@pytest.mark.timeout(180)
def test_cli_compare_prints_the_lift_and_rejects_a_missing_evaluation(ablation, tmp_path):
    root, _ = ablation
    runner = CliRunner()
    result = runner.invoke(cli, ["compare", str(root / "ablation" / "sdm"), str(root / "ablation" / "xdm")])
    assert result.exit_code == 0, result.output
    assert "xdm vs sdm" in result.output and "HR@50" in result.output
    bad = runner.invoke(cli, ["compare", str(tmp_path), str(root / "ablation" / "xdm")])
    assert bad.exit_code == 2 and "no evaluation" in bad.output
    # a run averaged with itself is that run: the same figures, said to be means of two runs
    twice = runner.invoke(cli, ["compare", str(root / "ablation" / "sdm"), str(root / "ablation" / "xdm"),
                                "--more", str(root / "ablation" / "sdm"), str(root / "ablation" / "xdm")])
    assert twice.exit_code == 0, twice.output
    assert "per-user means of 2 run(s)" in twice.output
    assert twice.output.splitlines()[1:] == result.output.splitlines()[1:]
    mixed = runner.invoke(cli, ["compare", str(root / "ablation" / "sdm"), str(root / "ablation" / "xdm"),
                                "--more", str(root / "ablation" / "xdm"), str(root / "ablation" / "sdm")])
    assert mixed.exit_code == 2 and "one variant" in mixed.output


@pytest.mark.timeout(180)
def test_rows_trained_in_two_processes_score_exactly_as_one_by_one(ablation, tmp_path):
    root, report = ablation
    again = ablate(split(root), tmp_path / "parallel", ("sdm", "xdm"), SETTINGS, SMALL_MODEL,
                   n_boot=300, progress=False, workers=2)
    assert again["workers"] == 2
    for row in ("sdm", "xdm"):
        assert load_evaluation(tmp_path / "parallel" / row)["users"] == load_evaluation(root / "ablation" / row)["users"]
    assert again["summary"] == report["summary"]
    assert not list((tmp_path / "parallel").glob(".split-*"))  # the split handed to the workers is removed


@pytest.mark.timeout(180)
def test_cli_tune_scores_the_days_before_the_test_period_and_picks_a_value(ablation, tmp_path):
    root, report = ablation
    out = tmp_path / "tune"
    args = ["--set", "model.embed_dim=16", "--set", "model.n_negatives=100", "--set", "learner.lr_warmup_steps=10",
            "tune", "--data", str(root / "world"), "--param", "model.triplet_weight", "--values", "1,0.1",
            "--epochs", "1", "--batch-size", "64", "--test-days", "1", "--cache", str(root / "splits"), "--boot", "200",
            "--jobs", "2", "--out", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    tuned = json.loads((out / "tune.json").read_text())
    assert tuned["data"]["end_ms"] == report["data"]["cut_ms"]  # the test period was never read
    assert tuned["data"]["holdout_days"] == 1.0 and tuned["data"]["test_users"] > 0
    assert tuned["best"]["value"] in (1.0, 0.1) and set(tuned["summary"]) == {"triplet_weight=1.0",
                                                                              "triplet_weight=0.1", "sdm"}
    assert f"--set model.triplet_weight={tuned['best']['value']}" in result.output
    assert (out / "tune.png").read_bytes()[:4] == b"\x89PNG"
    assert tuned["data"]["test_anchor"] == "first_click"
    assert "each user's windows at their first click after the cut" in (out / "tune.md").read_text()
    again = CliRunner().invoke(cli, [*args, "--resume"])
    assert again.exit_code == 0, again.output
    assert sorted(json.loads((out / "tune.json").read_text())["reused"]) == sorted(tuned["summary"])
    assert "--resume: " in (out / "tune.md").read_text()  # the table says its rows were read back


def test_cli_tune_rejects_an_unknown_setting_in_one_line(tmp_path):
    (tmp_path / "events.csv").write_text("")
    result = CliRunner().invoke(cli, ["tune", "--data", str(tmp_path), "--param", "model.nope", "--values", "1"])
    assert result.exit_code != 0 and "unknown model setting 'model.nope'" in result.output
    assert "Traceback" not in result.output
    bad = CliRunner().invoke(cli, ["tune", "--data", str(tmp_path), "--param", "model.triplet_weight",
                                   "--values", "1,ten"])
    assert bad.exit_code != 0 and "'ten' is not a valid float" in bad.output


@pytest.mark.timeout(180)
def test_resume_reads_back_finished_rows_and_trains_the_stopped_one_again(ablation, tmp_path):
    root, report = ablation
    out = tmp_path / "ablation"
    shutil.copytree(root / "ablation", out)
    checkpoint = next((out / "sdm").rglob("checkpoint.pt"))
    before = checkpoint.stat().st_mtime_ns
    (out / "xdm" / "row.json").unlink()  # xdm was stopped before it finished
    again = ablate(split(root), out, ("sdm", "xdm"), SETTINGS, SMALL_MODEL,
                   n_boot=300, progress=False, resume=True)
    assert again["reused"] == ["sdm"]
    assert checkpoint.stat().st_mtime_ns == before  # read back, not trained again
    assert again["summary"] == report["summary"]  # the retrained row scores as before: training is seeded
    assert (out / "xdm" / "row.json").is_file()
    assert "read back from an earlier run" in (out / "ablation.md").read_text()


@pytest.mark.timeout(180)
def test_resume_trains_again_when_an_input_changed(ablation, tmp_path):
    root, _ = ablation
    out = tmp_path / "ablation"
    shutil.copytree(root / "ablation", out)
    again = ablate(split(root), out, ("sdm",), SETTINGS,
                   {**SMALL_MODEL, "dropout": 0.2}, n_boot=300, progress=False, resume=True)
    assert again["reused"] == []
    record = json.loads((out / "sdm" / "row.json").read_text())
    assert record["model_config"]["dropout"] == 0.2 and record["seconds"] > 0


@pytest.mark.timeout(180)
def test_resume_scores_rows_again_on_another_test_anchor_without_training_them(ablation, tmp_path):
    from learner.data import build_offline_data
    from learner.offline import evaluate

    root, report = ablation
    out = tmp_path / "ablation"
    shutil.copytree(root / "ablation", out)
    checkpoints = {p: p.stat().st_mtime_ns for p in out.rglob("checkpoint.pt")}
    again = ablate(split(root, test_anchor="cut"), out, ("sdm", "xdm"), SETTINGS, SMALL_MODEL,
                   n_boot=300, progress=False, resume=True)
    assert report["data"]["test_anchor"] == "first_click"  # the default
    assert again["rescored"] == ["sdm", "xdm"] and again["reused"] == []
    assert {p: p.stat().st_mtime_ns for p in out.rglob("checkpoint.pt")} == checkpoints  # not trained again
    assert "test_anchor" not in again["data"] and again["summary"] != report["summary"]  # cut: as recorded before
    data = build_offline_data(split(root, test_anchor="cut"), progress=False)
    # the row's figures are its saved model's on the new test samples, and `xdm evaluate` on it agrees
    fresh = evaluate(out / "xdm", n_boot=300, cache_dir=root / "splits")
    assert fresh["users"] == list(data.test.user_ids) == load_evaluation(out / "xdm")["users"]
    assert fresh["per_user"] == load_evaluation(out / "xdm")["per_user"]
    assert "were scored on these test samples" in (out / "ablation.md").read_text()
    assert "each test user's windows at the cut" in (out / "ablation.md").read_text()
    back = ablate(split(root), out, ("sdm",), SETTINGS, SMALL_MODEL,
                  n_boot=300, progress=False, resume=True)  # and back to the default, by scoring
    assert back["rescored"] == ["sdm"] and back["summary"]["sdm"] == report["summary"]["sdm"]


@pytest.mark.timeout(180)
def test_cli_ablate_resume_skips_a_finished_row(ablation, tmp_path):
    root, _ = ablation
    args = ["--set", "model.embed_dim=16", "--set", "model.n_negatives=100", "--set", "learner.lr_warmup_steps=10",
            "ablate", "--data", str(root / "world"), "--variants", "sdm", "--epochs", "1", "--batch-size", "64",
            "--test-days", "1", "--cache", str(root / "splits"), "--boot", "200", "--out", str(tmp_path / "cli")]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    second = CliRunner().invoke(cli, [*args, "--resume"])
    assert second.exit_code == 0, second.output
    assert json.loads((tmp_path / "cli" / "ablation.json").read_text())["reused"] == ["sdm"]
    assert "--resume: sdm" in second.output


@pytest.mark.timeout(120)
def test_a_failing_row_in_a_worker_fails_the_run_and_a_killed_runs_split_goes_with_its_own(ablation, tmp_path):
    """A row that fails in a worker fails the run, which leaves no split hand-off of its own behind and
    removes one left by a killed run, but not one of a live run (one pool start checks all three)."""
    from learner.data import build_offline_data
    from learner.run_pool import Job, run_jobs

    root, _ = ablation
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    left_behind = tmp_path / f".split-{gone.pid}-7f00.pkl"
    live = tmp_path / f".split-{os.getpid()}-7f01.pkl"
    for path in (left_behind, live):
        path.write_bytes(b"a split")
    data = build_offline_data(split(root), progress=False)
    jobs = [Job("broken", "no_such_variant", tmp_path / "broken"), Job("other", "no_such_either", tmp_path / "other")]
    with pytest.raises(ValueError, match="unknown model variant 'no_such"):
        run_jobs(jobs, data, TrainSettings(epochs=1, device="cpu"), n_boot=100, seed=0, workers=2, progress=False)
    assert not left_behind.exists() and live.exists()
    assert [p.name for p in tmp_path.glob(".split-*")] == [live.name]  # this run's own hand-off is gone too
