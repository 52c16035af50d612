"""Choose one model setting on a validation split cut from the training days, never on the test period.

The papers tuned their hyper-parameters "on the validation set" (XDM §4.3) without saying how it was
cut. Here, as SDM's protocol does for the test: the log's last `test_days` (the test period) are held
out entirely, and of the days left the last `test_days` are the validation period (learner/data.py,
`holdout_days`). Each grid value trains the same variant on the days before validation and is scored on
the validation users; the baseline row (SDM by default) is trained on the same samples so that every
value's lift comes with its paired interval. The best value by `select` (HR@50 unless asked otherwise)
is what `xdm ablate` should then be run with on the test split.

`tune` writes OUT/<row>/ (each run and its eval.json), OUT/tune.md, OUT/tune.json and OUT/tune.png.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from learner.data import build_offline_data
from learner.evaluation_stats import DEFAULT_BOOT
from learner.model import VARIANTS
from learner.offline import CUTOFFS, METRIC_LABELS, METRICS, TrainSettings, compare, format_lift, metric_key
from learner.run_pool import VARIANT, Job, reused_note, run_jobs
from learner.split import Split, test_windows_taken
from xdm.config import parse_setting
from xdm.model_config import ModelConfig
from xdm.plotting import pyplot
from xdm.errors import XdmError


class TuningError(XdmError):
    """A tuning request that cannot run (unknown setting, bad value); the message says which."""


def parse_grid(param: str, values: str) -> tuple[str, list[Any]]:
    """('triplet_weight', [10.0, 1.0]) from 'model.triplet_weight' and '10,1', typed like ModelConfig's field."""
    name = param.removeprefix("model.")
    known = {f.name for f in fields(ModelConfig)}
    if name not in known:
        raise TuningError(f"unknown model setting {param!r}; one of: {', '.join(sorted(known))}")
    default = getattr(ModelConfig(), name)
    items = [v.strip() for v in values.split(",") if v.strip()]
    if not items:
        raise TuningError("give at least one value to try, comma-separated (for example 10,1,0.1)")
    parsed = [_typed(name, item, default) for item in items]
    if len(set(parsed)) != len(parsed):
        raise TuningError(f"values repeat in {values!r}")
    return name, parsed


def _typed(name: str, text: str, default: Any) -> Any:
    try:
        return parse_setting(text, type(default))
    except ValueError:
        raise TuningError(f"{name}: {text!r} is not a valid {type(default).__name__}") from None


def tune(
    split: Split,
    out_dir: str | Path,
    param: str,
    values: list[Any],
    variant: str = "xdm",
    baseline: str | None = "sdm",
    settings: TrainSettings | None = None,
    model_overrides: dict[str, Any] | None = None,
    select: str = "hr@50",
    n_boot: int = DEFAULT_BOOT,
    seed: int = 0,
    workers: int = 1,
    progress: bool = True,
    resume: bool = False,
) -> dict[str, Any]:
    """Train `variant` once per value of `param` on `split`'s validation split (`Split.validation`: its test
    period is never read); returns what tune.json holds.

    `resume` reads back rows of `out_dir` that finished with the same inputs (learner/run_pool.py).
    """
    if variant not in VARIANTS or (baseline is not None and baseline not in VARIANTS):
        raise TuningError(f"unknown variant; choose from {', '.join(VARIANTS)}")
    if select not in {metric_key(m, n) for m in METRICS for n in CUTOFFS}:
        raise TuningError(f"select must be one of the metrics, like hr@50 or mrr@50; got {select!r}")
    settings = settings or TrainSettings()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    data = build_offline_data(split.validation(), progress)
    base = dict(model_overrides or {})
    rows = {_row_name(param, v): v for v in values}
    jobs = [Job(name, variant, out / name, VARIANT, {**base, param: value}) for name, value in rows.items()]
    if baseline is not None:
        jobs.append(Job(baseline, baseline, out / baseline, VARIANT, base))
    results = run_jobs(jobs, data, settings, n_boot, seed, workers, progress, resume=resume)
    evals = {name: result.evaluation for name, result in results.items()}
    best = max(rows, key=lambda name: evals[name]["summary"][select]["mean"])
    report = {
        "data": data.summary(),
        "settings": asdict(settings),
        "param": param,
        "values": dict(rows),
        "variant": variant,
        "baseline": baseline,
        "select": select,
        "best": {"row": best, "value": rows[best]},
        "summary": {name: e["summary"] for name, e in evals.items()},
        "lift_vs_baseline": ({name: compare(evals[baseline], evals[name], n_boot, seed)["lift"] for name in rows}
                             if baseline is not None else {}),
        "timings": {**{name: r.seconds for name, r in results.items()},
                    "total_s": round(time.monotonic() - started, 1)},
        "workers": workers,
        "reused": [name for name, result in results.items() if result.reused],  # read back, not trained now
        "rescored": [name for name, result in results.items() if result.rescored],  # saved model scored again
    }
    (out / "tune.json").write_text(json.dumps(report, indent=2))
    (out / "tune.md").write_text(format_tuning(report))
    plot_tuning(report, out / "tune.png")
    return report


def _row_name(param: str, value: Any) -> str:
    return f"{param}={value}"


def format_tuning(report: dict[str, Any]) -> str:
    """Markdown: each value's validation metrics at 50 and the lift vs the baseline with its interval."""
    keys = [metric_key(m, 50) for m in METRICS]
    lifts = report["lift_vs_baseline"]
    head = ("| Row | " + " | ".join(f"{METRIC_LABELS[m]}@50" for m in METRICS)
            + (" | HR@50 lift | MRR@50 lift |" if lifts else " |"))
    lines = [head, "|---|" + "---:|" * (len(keys) + (2 if lifts else 0))]
    for name, summary in report["summary"].items():
        cells = [name + (" **(best)**" if name == report["best"]["row"] else "")]
        cells += [f"{summary[k]['mean']:.2%}" for k in keys]
        if lifts:
            cells += [format_lift(lifts.get(name, {}).get(k)) for k in ("hr@50", "mrr@50")]
        lines.append("| " + " | ".join(cells) + " |")
    d, s = report["data"], report["settings"]
    lines += ["", f"Validation split of {d['data_dir']}: the last {d['holdout_days']:g} day(s) (the test period) "
              f"held out, the {d['test_days']:g} day(s) before them scored ({d['test_users']:,} validation users, "
              f"{test_windows_taken(d, 'user')}), "
              f"{d['train_samples']:,} training samples before those. {report['variant']} with "
              f"{report['param']} in {list(report['values'].values())}; {s['epochs']} epoch(s), seed {s['seed']}. "
              f"Best by {report['select']}: {report['param']} = {report['best']['value']}. Intervals: 95% paired "
              f"bootstrap over validation users. Total {report['timings']['total_s']:.0f} s"
              f"{reused_note(report.get('reused'), report.get('rescored'))}."]
    return "\n".join(lines) + "\n"


def plot_tuning(report: dict[str, Any], path: Path) -> None:
    """The select metric per value with its 95% interval; the baseline as a band."""
    plt = pyplot()
    key = report["select"]
    names = list(report["values"])
    mean = [report["summary"][n][key]["mean"] for n in names]
    low = [report["summary"][n][key]["low"] for n in names]
    high = [report["summary"][n][key]["high"] for n in names]
    x = range(len(names))
    fig, ax = plt.subplots(figsize=(1.4 * len(names) + 3, 4))
    ax.errorbar(x, mean, yerr=[[m - lo for m, lo in zip(mean, low)], [hi - m for m, hi in zip(mean, high)]],
                fmt="o-", capsize=4, label=f"{report['variant']}")
    if report["baseline"] is not None:
        b = report["summary"][report["baseline"]][key]
        ax.axhspan(b["low"], b["high"], alpha=0.2, color="grey", label=f"{report['baseline']} (95% interval)")
        ax.axhline(b["mean"], color="grey", lw=1)
    ax.set_xticks(list(x), [str(report["values"][n]) for n in names])
    ax.set_xlabel(report["param"])
    ax.set_ylabel(f"{key} on the validation users")
    ax.set_title(f"Tuning {report['param']} on the validation split (best: {report['best']['value']})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
