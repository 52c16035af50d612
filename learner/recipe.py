"""The default recipe of `xdm train`: what must be chosen is chosen on validation days, and said.

A setting tuned on one world is not a default a user can trust on their own log (#28): λ
(`model.triplet_weight`, the weight of the metric loss in eq. 9) was chosen at 0.3 on the default
simulated world, where it was best on validation days (HR@50 38.7 % against 38.3 % at 0.1, 36.7 % at
0.03, 37.7 % at 1; the papers' 10 lost 28 %), and on a world written by other code the same 0.3 cost
XDM 7.8 % HR@50 while 0.03 and 0 were +1.4 % (3 was -40.7 %). So `xdm train` chooses λ itself:

1. Nothing to choose when the variant has no metric loss (SDM, `triplet = none`), when the caller gave
   λ (`--triplet-weight`, `--set model.triplet_weight`, XDM_MODEL__TRIPLET_WEIGHT), or with
   `--no-choose` (the config's value stands).
2. Otherwise the variant is trained once per value of `LAMBDA_GRID` on the validation split
   (`Split.validation`: the test period held out unread, the `test_days` before it scored, the days
   before those trained; `learner/tuning.py`'s protocol, into RUN/choice/). The best validation HR@50
   wins; a tie goes to the smaller λ (less of the loss the papers add to the cross-entropy).
3. The final model is trained on the full training split with that λ, and RUN/run.json records under
   "choice" what was chosen, how, and the validation table.

The grid {0, 0.03, 0.3} spans the values that won somewhere: 0.3 on the default world, 0.03 and 0 (level)
on the other; 0 is the plug-in without its metric loss (the fusion alone), and values from 1 up lost
everywhere they were tried. Three values cost three trainings on fewer days, so the recipe takes
about four times one `xdm train`; `--jobs` trains the grid side by side.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from learner.evaluation_stats import DEFAULT_BOOT
from learner.model import config_for
from learner.offline import TrainSettings, train_offline
from learner.split import Split
from learner.tuning import tune

LAMBDA = "triplet_weight"  # the ModelConfig field the recipe chooses
LAMBDA_GRID = (0.0, 0.03, 0.3)  # module docstring: why these
SELECT = "hr@50"  # the validation metric that picks
CHOICE_DIR = "choice"  # RUN/choice/: the grid's runs and tune.md/.json/.png
# how λ came to be, as run.json records it
CHOSEN, GIVEN, CONFIG, NOT_NEEDED = "chosen on validation days", "given", "config (--no-choose)", "no metric loss"


@dataclass(frozen=True)
class Choice:
    """What the recipe decided about λ, as run.json's "choice" records it."""

    param: str
    value: float
    how: str  # CHOSEN, GIVEN, CONFIG or NOT_NEEDED
    grid: tuple[float, ...] = ()
    select: str = SELECT
    validation: dict[str, dict[str, float]] = field(default_factory=dict)  # str(λ) -> {metric: mean}
    split: dict[str, Any] = field(default_factory=dict)  # the validation split's summary
    folder: str | None = None  # where the grid's runs are


def pick_lambda(scores: dict[float, float]) -> float:
    """The λ with the highest validation score; a tie goes to the smaller λ."""
    return min(scores, key=lambda value: (-scores[value], value))


def choose_lambda(
    split: Split,
    variant: str,
    out_dir: str | Path,
    settings: TrainSettings,
    model_overrides: dict[str, Any] | None = None,
    grid: tuple[float, ...] = LAMBDA_GRID,
    workers: int = 1,
    n_boot: int = DEFAULT_BOOT,
    progress: bool = True,
) -> Choice:
    """Train `variant` once per λ of `grid` on `split.validation()` and pick by validation HR@50.

    Only the validation split is built here: the test period of `split` is never read."""
    values = sorted(set(grid))
    folder = Path(out_dir) / CHOICE_DIR
    report = tune(split, folder, LAMBDA, values, variant, baseline=None, settings=settings,
                  model_overrides=model_overrides, select=SELECT, n_boot=n_boot, workers=workers,
                  progress=progress, resume=True)
    by_value = {value: report["summary"][row] for row, value in report["values"].items()}
    best = pick_lambda({value: summary[SELECT]["mean"] for value, summary in by_value.items()})
    table = {str(value): {key: summary[key]["mean"] for key in ("hr@50", "mrr@50")}
             for value, summary in by_value.items()}
    return Choice(f"model.{LAMBDA}", best, CHOSEN, tuple(values), SELECT, table, report["data"], str(folder))


def train_with_recipe(
    split: Split,
    variant: str,
    out_dir: str | Path,
    settings: TrainSettings | None = None,
    model_overrides: dict[str, Any] | None = None,
    *,
    given: float | None = None,
    choose: bool = True,
    grid: tuple[float, ...] = LAMBDA_GRID,
    workers: int = 1,
    n_boot: int = DEFAULT_BOOT,
    progress: bool = True,
) -> tuple[Path, Choice]:
    """`xdm train`: decide λ (module docstring), train the final model on `split`, record the choice.

    `given` is λ named by the caller; `choose=False` keeps `model_overrides`' (the config's) value."""
    settings = settings or TrainSettings()
    overrides = dict(model_overrides or {})
    if given is not None:
        overrides[LAMBDA] = given
    model = config_for(variant, **overrides)
    if model.triplet == "none":
        choice = Choice(f"model.{LAMBDA}", model.triplet_weight, NOT_NEEDED)
    elif given is not None:
        choice = Choice(f"model.{LAMBDA}", given, GIVEN)
    elif not choose:
        choice = Choice(f"model.{LAMBDA}", model.triplet_weight, CONFIG)
    else:
        choice = choose_lambda(split, variant, out_dir, settings, overrides, grid, workers, n_boot, progress)
    run = train_offline(split, variant, out_dir, settings, {**overrides, LAMBDA: choice.value}, progress)
    record_choice(run, choice)
    return run, choice


def record_choice(run_dir: Path, choice: Choice) -> None:
    """Add the choice to the run's run.json (train_offline wrote the rest)."""
    path = run_dir / "run.json"
    run = json.loads(path.read_text())
    run["choice"] = asdict(choice)
    path.write_text(json.dumps(run, indent=2))


def format_choice(choice: Choice) -> str:
    """What the recipe says about λ: the validation table when it chose, else how λ was set."""
    if choice.how != CHOSEN:
        return f"{choice.param} = {choice.value:g} ({choice.how}; nothing chosen)"
    s = choice.split
    lines = [f"chose {choice.param} = {choice.value:g} by validation {choice.select.upper()} "
             f"({s['test_users']:,} validation users on the {s['test_days']:g} day(s) before the held-out test "
             f"period, {s['train_samples']:,} training samples before those; runs in {choice.folder}):",
             f"  {'λ':>6}  {'HR@50':>7}  {'MRR@50':>7}"]
    for value in choice.grid:
        row = choice.validation[str(value)]
        mark = "  <- chosen" if value == choice.value else ""
        lines.append(f"  {value:>6g}  {row['hr@50']:>7.2%}  {row['mrr@50']:>7.2%}{mark}")
    lines.append("  (give --triplet-weight X to skip the choice, --no-choose to keep the config's value)")
    return "\n".join(lines)
