"""`xdm train`'s default recipe (learner/recipe.py): λ chosen on validation days only, said and recorded, and
the ways to skip the choice. No services: a tiny world on the CPU."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from learner.offline import TrainSettings
from learner.recipe import (CHOICE_DIR, CHOSEN, CONFIG, GIVEN, LAMBDA_GRID, NOT_NEEDED, choose_lambda, format_choice,
                            pick_lambda, train_with_recipe)
from learner.split import Split
from replay.simulate import simulate
from xdm.cli import cli
from xdm.log_format import EventWriter, read_events

# a small model and a short warm-up (~45 steps an epoch here), in code and through the command line
SMALL_MODEL = {"embed_dim": 16, "n_negatives": 100}
SETTINGS = TrainSettings(epochs=1, batch_size=64, device="cpu", lr_warmup_steps=10)
SMALL_SETS = ["--set", "model.embed_dim=16", "--set", "model.n_negatives=100", "--set", "learner.lr_warmup_steps=10"]
FAST = ["--epochs", "1", "--batch-size", "64", "--test-days", "1"]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("recipe")
    simulate(160, 800, 6, 3, root / "world", progress=False)
    return root / "world"


def test_a_tie_goes_to_the_smaller_lambda() -> None:
    assert pick_lambda({0.0: 0.40, 0.03: 0.42, 0.3: 0.42}) == 0.03
    assert pick_lambda({0.3: 0.5, 0.0: 0.5}) == 0.0
    assert pick_lambda({0.0: 0.1, 0.03: 0.2, 0.3: 0.3}) == 0.3


@pytest.mark.timeout(300)
def test_train_chooses_lambda_on_validation_days_without_reading_the_test_days(world: Path, tmp_path: Path) -> None:
    run_dir, chosen = train_with_recipe(Split(world, test_days=1.0), "xdm", tmp_path / "run", SETTINGS, SMALL_MODEL,
                                        n_boot=200, progress=False)
    run = json.loads((run_dir / "run.json").read_text())
    choice = run["choice"]
    assert choice["how"] == CHOSEN and choice["param"] == "model.triplet_weight"
    assert tuple(choice["grid"]) == LAMBDA_GRID and set(choice["validation"]) == {str(v) for v in LAMBDA_GRID}
    hr = {float(v): row["hr@50"] for v, row in choice["validation"].items()}
    assert choice["value"] == pick_lambda(hr) == run["model_config"]["triplet_weight"]  # the final model uses it
    # the choice was scored on the day before the test period and trained on the days before that
    assert choice["split"]["holdout_days"] == 1.0 and choice["split"]["end_ms"] == run["data"]["cut_ms"]
    assert run["data"]["holdout_days"] == 0.0  # while the final model trains on the whole training split
    assert (run_dir / CHOICE_DIR / "tune.json").is_file()
    said = format_choice(chosen)
    assert f"chose model.triplet_weight = {choice['value']:g}" in said and "<- chosen" in said

    # The same log with other items in its test days (each test-period event's item moved to the next
    # item of the catalogue) must give the same choice to the last digit: nothing of the test period reaches it.
    other = tmp_path / "other"
    other.mkdir()
    for name in ("items.csv", "users.csv"):
        shutil.copy(world / name, other / name)
    events = list(read_events(world))
    ids = sorted({e.item_id for e in events})
    moved = dict(zip(ids, ids[1:] + ids[:1]))
    rows = [(e.ts_ms, e.user_id, moved[e.item_id] if e.ts_ms >= run["data"]["cut_ms"] else e.item_id, e.kind,
             e.event_id, e.request_id, e.position) for e in events]
    assert sum(row[2] != e.item_id for row, e in zip(rows, events)) > 0.1 * len(events)
    with EventWriter(other / "events.csv") as writer:
        writer.write_columns(*(list(column) for column in zip(*rows)))
    again = choose_lambda(Split(other, test_days=1.0), "xdm", tmp_path / "other-run", SETTINGS, SMALL_MODEL,
                          n_boot=200, progress=False)
    assert again.validation == chosen.validation and again.value == chosen.value
    assert again.split["end_ms"] == chosen.split["end_ms"] and again.split["test_users"] == chosen.split["test_users"]


@pytest.mark.timeout(300)
def test_a_given_lambda_the_config_value_or_a_model_without_metric_loss_skip_the_choice(world: Path,
                                                                                       tmp_path: Path) -> None:
    cases = {
        "flag": (["--triplet-weight", "0.1"], GIVEN, 0.1),
        "set": (["--set-before"], GIVEN, 0.05),
        "no-choose": (["--no-choose"], CONFIG, 0.3),
        "sdm": (["--model", "sdm"], NOT_NEEDED, 0.3),
    }
    for name, (extra, how, value) in cases.items():
        out = tmp_path / name
        sets = [*SMALL_SETS, "--set", "model.triplet_weight=0.05"] if extra == ["--set-before"] else SMALL_SETS
        options = [] if extra == ["--set-before"] else extra  # --set belongs before the subcommand
        result = CliRunner().invoke(cli, [*sets, "train", "--data", str(world), "--out", str(out), *FAST,
                                          "--cache", str(tmp_path / "cache"), *options])
        assert result.exit_code == 0, result.output
        run = json.loads((out / "run.json").read_text())
        assert run["choice"]["how"] == how and run["choice"]["value"] == value, name
        assert run["model_config"]["triplet_weight"] == value, name
        assert not (out / CHOICE_DIR).exists(), name  # nothing trained on validation days
        assert f"model.triplet_weight = {value:g} ({how}; nothing chosen)" in result.output, name
