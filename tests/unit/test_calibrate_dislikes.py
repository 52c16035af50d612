"""bench/calibrate_dislikes.py: a dislike strength is judged on a calibration world's validation days."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "bench" / "calibrate_dislikes.py"
_spec = importlib.util.spec_from_file_location("calibrate_dislikes", _PATH)
calibrate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(calibrate)

TINY = ["--users", "40", "--items", "300", "--days", "6", "--test-days", "1", "--epochs", "1", "--boot", "100",
        "--cache", ""]


def test_the_default_world_and_bad_settings_are_refused_before_anything_runs(tmp_path, capsys):
    for argv, says in ((["--seed", "1", "--point", "off"], "default world"),
                       (["--point", "dislike_brand=3"], "dislike_brand=3"),
                       (["--point", "dislike_depth=x"], "not a number"),
                       ([], "at least one --point")):
        with pytest.raises(SystemExit) as stop:
            calibrate.main([*argv, "--out", str(tmp_path)])
        assert stop.value.code == 2 and says in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.timeout(240)
def test_each_point_gets_its_own_world_and_a_paired_lift_and_resume_reads_them_back(tmp_path, capsys):
    argv = [*TINY, "--out", str(tmp_path), "--point", "off", "--point", "dislike_brands=4,dislike_depth=1.0"]
    assert calibrate.main(argv) == 0
    report = json.loads((tmp_path / "calibration.json").read_text())
    off, on = report["points"]
    assert off["point"] == [] and on["point"] == ["dislike_brands=4", "dislike_depth=1.0"]
    for point in (off, on):
        assert point["validation_users"] > 0 and point["train_samples"] > 0 and point["reused"] == []
        assert point["lift"]["hr@50"]["low"] <= point["lift"]["hr@50"]["lift"] <= point["lift"]["hr@50"]["high"]
        assert 0 < point["ctr"] < 1 and point["windows"]["long"] > 0
    # the same seed and sizes: the dislikes are the only difference, and they cost clicks
    assert on["ctr"] < off["ctr"]
    assert (tmp_path / "calibration.png").stat().st_size > 0
    assert "| off |" in (tmp_path / "calibration.md").read_text()
    worlds = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/world/events.csv")}
    assert len(worlds) == 2
    capsys.readouterr()
    assert calibrate.main([*argv, "--resume"]) == 0
    again = json.loads((tmp_path / "calibration.json").read_text())
    assert [p["reused"] for p in again["points"]] == [list(calibrate.ROWS)] * 2
    assert [p["lift"] for p in again["points"]] == [off["lift"], on["lift"]]
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/world/events.csv")} == worlds  # not simulated again
    # other training settings score the same worlds: nothing simulated again, rows in the new folder
    other = tmp_path / "other"
    assert calibrate.main([*TINY, "--out", str(other), "--worlds", str(tmp_path), "--point", "off",
                           "--test-anchor", "first_click"]) == 0
    assert (other / "off" / "sdm").is_dir() and not (other / "off" / "world").exists()
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/world/events.csv")} == worlds
    assert "their first click after the cut" in (other / "calibration.md").read_text()
