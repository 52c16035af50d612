"""Table 2 of SRU2B on one log: every ablation row trained on the same split, scored, and compared with SDM.

`ablate` builds the split once, trains each variant with `train_offline`, evaluates it, and writes
    OUT/<variant>/            the run (checkpoint, run.json) and its eval.json
    OUT/ablation.md           Table 2's shape: each metric at 50 and 80, the value and the lift vs SDM
    OUT/ablation.json         every row's summary and its paired-bootstrap lift vs SDM with the interval
    OUT/ablation.png          bars with 95% bootstrap intervals
    OUT/ablation_lift.png     each row's lift vs SDM on HR@50 and MRR@50 with its paired interval
A popularity row (the most clicked training labels for everyone) is added as a floor; `peers=True`
adds torch-rechub's GRU4Rec, NARM and SASRec (learner/peers.py) trained on the same samples, as rows
rechub-gru4rec, ... (sasrec, gru4rec and hstu name our own bases). Rows are independent, so
`workers` > 1 trains them side by side (learner/run_pool.py); the figures do not change.
Every row is also compared with its own base when that ran too (xdm-sasrec vs sasrec: the plug-in's
lift on that base), in `lift_vs_own_base`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from learner.data import build_offline_data
from learner.model import VARIANTS, variant_name
from learner.evaluation_stats import DEFAULT_BOOT
from learner.offline import (
    CUTOFFS,
    METRIC_LABELS,
    METRICS,
    TrainSettings,
    compare,
    format_lift,
    metric_key,
    popularity_baseline,
)
from learner.run_pool import PEER, VARIANT, Job, JobResult, reused_note, run_jobs
from learner.split import Split, test_windows_taken
from xdm.model_config import ModelConfig
from xdm.plotting import pyplot

log = logging.getLogger(__name__)

TABLE2 = ("sdm", "xdm_wo_conf_metric", "xdm_wo_metric", "xdm_wo_fusion_sym", "xdm_wo_sym", "xdm")
BASELINE = "sdm"
PEER_ROW_PREFIX = "rechub-"  # a peer's row: the bare names sasrec, gru4rec and hstu are our own bases
LEGACY_PEER_ROWS = ("gru4rec", "narm", "sasrec")  # their row names in reports written before the bases
BASE_NAMES = {"sdm": "SDM", "sasrec": "SASRec", "gru4rec": "GRU4Rec", "hstu": "HSTU", "narm": "NARM"}
_SDM_ROW_NAMES = {
    "sdm": "SDM",
    "xdm_wo_conf_metric": "XDM (w/o conf+metric)",
    "xdm_wo_metric": "XDM (w/o metric)",
    "xdm_wo_fusion_sym": "XDM (w/o fusion+sym)",
    "xdm_wo_sym": "XDM (w/o sym)",
    "xdm": "XDM",
}
ROW_NAMES = {
    "pop": "POP (floor)",
    **{PEER_ROW_PREFIX + peer: f"{BASE_NAMES[peer]} (torch-rechub)" for peer in ("gru4rec", "narm", "sasrec", "hstu")},
    **_SDM_ROW_NAMES,
    **{variant_name(row, base): f"{label} on {BASE_NAMES[base]}" if row != "sdm" else BASE_NAMES[base]
       for base in ("sasrec", "gru4rec", "hstu") for row, label in _SDM_ROW_NAMES.items()},
}


def ablate(
    split: Split,
    out_dir: str | Path,
    variants: tuple[str, ...] = TABLE2,
    settings: TrainSettings | None = None,
    model_overrides: dict[str, Any] | None = None,
    peers: bool = False,
    n_boot: int = DEFAULT_BOOT,
    seed: int = 0,
    progress: bool = True,
    workers: int = 1,
    resume: bool = False,
) -> dict[str, Any]:
    """Train and score every row on `split`, `workers` rows at a time; returns what ablation.json holds.

    `resume` reads back rows of `out_dir` that finished with the same inputs (learner/run_pool.py).
    """
    if BASELINE not in variants:
        raise ValueError(f"the ablation compares against {BASELINE!r}: include it in the variants")
    settings = settings or TrainSettings()
    defaults = asdict(ModelConfig())
    changed = {k: v for k, v in (model_overrides or {}).items() if defaults.get(k) != v}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    data = build_offline_data(split, progress)
    evals: dict[str, dict[str, Any]] = {"pop": popularity_baseline(data, n_boot, seed)}
    timings: dict[str, float] = {"data_s": round(time.monotonic() - started, 1)}
    jobs = [Job(PEER_ROW_PREFIX + name, name, out / (PEER_ROW_PREFIX + name), PEER)
            for name in (_peer_names() if peers else ())]
    jobs += [Job(variant, variant, out / variant, VARIANT, dict(model_overrides or {})) for variant in variants]
    results = run_jobs(jobs, data, settings, n_boot, seed, workers, progress, _log_done, resume)
    for name, result in results.items():
        evals[name] = result.evaluation
        timings[name] = result.seconds
    lifts = {name: compare(evals[BASELINE], result, n_boot, seed)["lift"]
             for name, result in evals.items() if name != BASELINE}
    own_base_lifts = {name: {"base": base, "lift": compare(evals[base], evals[name], n_boot, seed)["lift"]}
                      for name, base in own_bases(list(evals)).items()}
    timings["total_s"] = round(time.monotonic() - started, 1)
    report = {
        "data": data.summary(),
        "settings": asdict(settings),
        "model_overrides": changed,  # only the settings that differ from ModelConfig's defaults
        "baseline": BASELINE,
        "rows": list(evals),
        "summary": {name: result["summary"] for name, result in evals.items()},
        "lift_vs_baseline": lifts,
        "lift_vs_own_base": own_base_lifts,  # rows on another base than the baseline's, vs that base alone
        "timings": timings,
        "workers": workers,  # rows trained side by side: each row's seconds are its own wall time
        "reused": [name for name, result in results.items() if result.reused],  # read back, not trained now
        "rescored": [name for name, result in results.items() if result.rescored],  # saved model scored again
    }
    (out / "ablation.json").write_text(json.dumps(report, indent=2))
    (out / "ablation.md").write_text(format_table(report))
    plot_ablation(report, out / "ablation.png")
    plot_lifts(report, out / "ablation_lift.png")
    return report


def own_bases(rows: list[str]) -> dict[str, str]:
    """Each variant row on a base other than the baseline's -> the row of that base alone, when it ran
    (xdm-sasrec -> sasrec); the baseline's own rows are compared with it already."""
    pairs = {}
    for name in rows:
        if name not in VARIANTS:
            continue  # the floor and the peers
        base_row = variant_name(BASELINE, VARIANTS[name]["base"])
        if base_row not in (name, BASELINE) and base_row in rows:
            pairs[name] = base_row
    return pairs


def _peer_names() -> tuple[str, ...]:
    from learner.peers import PEERS  # torch-rechub is the optional bench extra

    return tuple(PEERS)


def _log_done(result: JobResult) -> None:
    log.info("row done", extra={"row": result.name, "seconds": result.seconds,
                                "hr50": round(result.evaluation["summary"]["hr@50"]["mean"], 4)})


def format_table(report: dict[str, Any]) -> str:
    """Markdown in Table 2's shape; a lift marked * has a 95% paired-bootstrap interval excluding 0."""
    keys = [metric_key(m, n) for n in CUTOFFS for m in METRICS]
    header = "| Method | " + " | ".join(f"{_label(k)} | lift" for k in keys) + " |"
    rule = "|---|" + "---:|---:|" * len(keys)
    lines = [header, rule]
    for name in report["rows"]:
        cells = [row_label(report, name)]
        for key in keys:
            cells.append(f"{report['summary'][name][key]['mean']:.2%}")
            cells.append(_lift_cell(report["lift_vs_baseline"].get(name, {}).get(key)))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Lift vs {row_label(report, report['baseline'])} with its 95% paired-bootstrap interval "
              f"({report['data']['test_users']:,} test users):", "",
              "| Method | " + " | ".join(_label(k) for k in keys) + " |", "|---|" + "---:|" * len(keys)]
    for name in report["rows"]:
        if name == report["baseline"]:
            continue
        lifts = report["lift_vs_baseline"][name]
        lines.append("| " + " | ".join([row_label(report, name)] + [format_lift(lifts[k]) for k in keys]) + " |")
    own = report.get("lift_vs_own_base") or {}
    if own:
        lines += ["", "Lift vs its own base (the plug-in on that base), 95% paired-bootstrap interval:", "",
                  "| Method | vs | " + " | ".join(_label(k) for k in keys) + " |", "|---|---|" + "---:|" * len(keys)]
        for name, pair in own.items():
            cells = [row_label(report, name), row_label(report, pair["base"])]
            lines.append("| " + " | ".join(cells + [format_lift(pair["lift"][k]) for k in keys]) + " |")
    d, s = report["data"], report["settings"]
    lines += ["", f"Data: {d['data_dir']}, {d['train_samples']:,} training samples, {d['test_users']:,} test "
              f"users, last {d['test_days']:g} day(s) as test, {test_windows_taken(d)}. "
              f"Training: {s['epochs']} epoch(s), batch "
              f"{s['batch_size']}, seed {s['seed']}; model settings changed from the defaults: "
              f"{report['model_overrides'] or 'none'}."
              f" * = 95% interval of the lift excludes 0. Total {report['timings']['total_s']:.0f} s"
              f"{reused_note(report.get('reused'), report.get('rescored'))}."]
    return "\n".join(lines) + "\n"


def row_label(report: dict[str, Any], name: str) -> str:
    """A row's name in tables and figures. Reports written before our own bases existed (no
    `lift_vs_own_base`) named torch-rechub's peers by the bare names the bases took since."""
    if "lift_vs_own_base" not in report and name in LEGACY_PEER_ROWS:
        name = PEER_ROW_PREFIX + name
    return ROW_NAMES.get(name, name)


def _lift_cell(lift: dict[str, float] | None) -> str:
    if lift is None:
        return "-"
    mark = "*" if lift["low"] > 0 or lift["high"] < 0 else ""
    return f"{lift['lift']:+.2%}{mark}"


def _label(key: str) -> str:
    metric, _, n = key.partition("@")
    return f"{METRIC_LABELS[metric]}@{n}"


def plot_ablation(report: dict[str, Any], path: Path) -> None:
    """Grouped bars (one group per metric, one bar per row) with 95% bootstrap intervals."""
    import numpy as np

    plt = pyplot()
    rows = report["rows"]
    fig, axes = plt.subplots(1, len(CUTOFFS), figsize=(7 * len(CUTOFFS), 4.5), squeeze=False)
    width = 0.8 / len(rows)
    for ax, n in zip(axes[0], CUTOFFS):
        keys = [metric_key(m, n) for m in METRICS]
        x = np.arange(len(keys))
        for i, name in enumerate(rows):
            s = [report["summary"][name][k] for k in keys]
            mean = np.array([v["mean"] for v in s])
            err = np.array([[v["mean"] - v["low"] for v in s], [v["high"] - v["mean"] for v in s]])
            ax.bar(x + (i - (len(rows) - 1) / 2) * width, mean, width, yerr=err, capsize=2,
                   label=row_label(report, name))
        ax.set_xticks(x, [_label(k) for k in keys])
        ax.set_yscale("log")
        ax.set_title(f"Top-{n} (95% bootstrap intervals over test users)")
        ax.grid(axis="y", alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_lifts(report: dict[str, Any], path: Path, keys: tuple[str, ...] = ("hr@50", "mrr@50")) -> None:
    """Each row's lift vs the baseline with its 95% paired interval, one panel per metric (a forest plot)."""
    plt = pyplot()
    rows = [name for name in report["rows"] if name != report["baseline"]]
    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 0.45 * len(rows) + 1.5), squeeze=False,
                             sharey=True)
    for ax, key in zip(axes[0], keys):
        lifts = [report["lift_vs_baseline"][name][key] for name in rows]
        y = range(len(rows))
        mean = [100 * lift["lift"] for lift in lifts]
        err = [[100 * (lift["lift"] - lift["low"]) for lift in lifts],
               [100 * (lift["high"] - lift["lift"]) for lift in lifts]]
        colors = ["tab:green" if lift["low"] > 0 else "tab:red" if lift["high"] < 0 else "tab:grey" for lift in lifts]
        for row, (m, low, high, color) in enumerate(zip(mean, err[0], err[1], colors)):
            ax.errorbar([m], [row], xerr=[[low], [high]], fmt="o", color=color, capsize=3)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks(list(y), [row_label(report, name) for name in rows])
        ax.invert_yaxis()
        ax.set_xlabel(f"lift of {_label(key)} vs {row_label(report, report['baseline'])} (%)")
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"95% paired-bootstrap intervals over {report['data']['test_users']:,} test users "
                 "(green: above, red: below, grey: includes 0)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
