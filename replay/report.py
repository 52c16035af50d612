"""The A/B report of a replay: per-arm metrics with intervals, lifts with p-values, plots over time.

Reads the replay's `scores.jsonl` (one scored request per line) and writes into the same folder:
`report.json` (every figure), `summary.md` (the table a person reads) and `<metric>.png` (the metric per
arm over event time, daily means with their 95 % intervals). Estimators: replay.abstats.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from infra.learner_settings import describe, recorded
from replay.abstats import arm_estimate, compare_means, compare_paired
from replay.skipped import GROUPS, REPORTED
from xdm.plotting import pyplot
from xdm.time_units import DAY_MS

METRICS = ("hr50", "mrr50", "r50", "f150", "hr80", "mrr80", "r80", "f180")
LABELS = {"hr50": "HR@50", "mrr50": "MRR@50", "r50": "R@50", "f150": "F1@50",
          "hr80": "HR@80", "mrr80": "MRR@80", "r80": "R@80", "f180": "F1@80"}
PLOTTED = ("hr50", "mrr50", "r50", "f150")


class ReportError(ValueError):
    """The replay folder has nothing to report on."""


def load_scores(out_dir: Path) -> list[dict]:
    path = Path(out_dir) / "scores.jsonl"
    if not path.exists():
        raise ReportError(f"{path} does not exist: run `xdm replay` into {out_dir} first")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        raise ReportError(f"{path} holds no scored request")
    return rows


def user_means(rows: list[dict], metric: str) -> dict[str, dict[str, float]]:
    """Arm -> user -> mean of `metric` over the user's requests (users are the unit of randomisation);
    requests without a value (None, or a column older scores lack) are left out."""
    sums: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in rows:
        if r.get(metric) is not None:
            sums[(r["arm"], r["user_id"])].append(r[metric])
    by_arm: dict[str, dict[str, float]] = defaultdict(dict)
    for (arm, user), values in sorted(sums.items()):
        by_arm[arm][user] = float(np.mean(values))
    return dict(by_arm)


def per_user(rows: list[dict], metric: str) -> dict[str, np.ndarray]:
    """Arm -> per-user means of `metric`, users in sorted order."""
    return _arrays(user_means(rows, metric))


def _arrays(means: dict[str, dict[str, float]]) -> dict[str, np.ndarray]:
    return {arm: np.array(list(by_user.values())) for arm, by_user in means.items()}


def build_report(out_dir: Path, baseline: str | None = None, seed: int = 0, alpha: float = 0.05,
                 warm_days: float | None = None) -> dict:
    """warm_days: leave out requests in the log's first days (default: the replay's own --warm-days)."""
    every = load_scores(out_dir)
    first_day = min(r["ts_ms"] for r in every) // DAY_MS  # the plots' day 0, whatever the warm-up
    state = _state(out_dir)
    rows, warm = _after_warm_up(every, state, warm_days)
    arms = sorted({r["arm"] for r in rows})
    base = baseline if baseline in arms else (arms[-1] if "sdm" not in arms else "sdm")
    report: dict = {"requests": len(rows), "arms": {}, "comparisons": [], "baseline": base, "alpha": alpha,
                    "warm_days": warm,
                    "fallback_share": {a: float(np.mean([r["fallback"] for r in rows if r["arm"] == a])) for a in arms},
                    "learner_settings": recorded(out_dir), "learner_gate": _gate_record(state)}
    paired = bool(state.get("options", {}).get("paired"))
    report["paired"] = paired
    for metric in METRICS:
        means = user_means(rows, metric)
        values = _arrays(means)
        for arm in arms:
            est = arm_estimate(values[arm], seed=seed)
            report["arms"].setdefault(arm, {"users": est.users, "requests": sum(r["arm"] == arm for r in rows)})
            report["arms"][arm][metric] = {"mean": est.mean, "low": est.low, "high": est.high}
        for arm in arms:
            if arm != base:
                c = (compare_paired(*_aligned(means[base], means[arm]), (base, arm), alpha=alpha, seed=seed)
                     if paired else compare_means(values[base], values[arm], (base, arm), alpha=alpha, seed=seed))
                report["comparisons"].append({"metric": metric, **c.as_dict()})
    report["over_time"] = _over_time(rows, arms, first_day)
    report["responsiveness"] = _responsiveness(rows, arms, seed)
    (Path(out_dir) / "report.json").write_text(json.dumps(report, indent=2))
    (Path(out_dir) / "summary.md").write_text(summary_markdown(report))
    _plots(report, Path(out_dir))
    return report


def summary_markdown(report: dict) -> str:
    arms, base = sorted(report["arms"]), report["baseline"]
    lines = [f"# Replay A/B report", "",
             f"{report['requests']:,} scored requests; users per arm: "
             + ", ".join(f"{a} {report['arms'][a]['users']}" for a in arms)
             + f"; baseline {base}; "
             + ("paired: every sampled request was answered by every arm; intervals 95 % (paired bootstrap over "
                "users), p-values two-sided paired test." if report.get("paired") else
                "intervals 95 % (bootstrap over users), p-values two-sided Welch.")
             + (f" Requests of the log's first {report['warm_days']:g} days are left out: those days warmed the "
                "learners up, so the arms are compared as trained models, as in a live A/B test."
                if report.get("warm_days") else ""), "",
             "| metric | " + " | ".join(arms) + " | " + " | ".join(f"lift {a} vs {base}" for a in arms if a != base) + " |",
             "|---" * (1 + len(arms) + len(arms) - 1) + "|"]
    for metric in METRICS:
        cells = [f"{_pct(report['arms'][a][metric]['mean'])} [{_pct(report['arms'][a][metric]['low'])}, "
                 f"{_pct(report['arms'][a][metric]['high'])}]" for a in arms]
        lifts = []
        for c in report["comparisons"]:
            if c["metric"] == metric:
                mark = " *" if c["significant"] else ""
                lifts.append(f"{c['lift']:+.1%} [{c['low']:+.1%}, {c['high']:+.1%}] p={c['p_value']:.3f}{mark}")
        lines.append(f"| {LABELS[metric]} | " + " | ".join(cells + lifts) + " |")
    lines += ["", f"`*` significant at alpha = {report['alpha']}. Fallback answers (cold start): "
              + ", ".join(f"{a} {report['fallback_share'][a]:.1%}" for a in arms) + ".", "",
              describe(report.get("learner_settings", {})), "", *_gate_lines(report), "",
              *_responsiveness_lines(report)]
    lines += [f"![{LABELS[m]} over time]({m}.png)" for m in PLOTTED]
    return "\n".join(lines) + "\n"


def _responsiveness(rows: list[dict], arms: list[str], seed: int) -> dict:
    """Per arm and replay.skipped column: the mean over users (each user's mean over the requests that had
    such skipped items) with its 95 % bootstrap interval, and how many users and requests it rests on."""
    out: dict = {}
    for column in REPORTED:
        means = user_means(rows, column)
        for arm in arms:
            values = np.array(list(means.get(arm, {}).values()), dtype=float)
            if len(values) < 2:
                continue
            est = arm_estimate(values, seed=seed)
            out.setdefault(arm, {})[column] = {"mean": est.mean, "low": est.low, "high": est.high,
                                               "users": est.users,
                                               "requests": sum(r["arm"] == arm and r.get(column) is not None for r in rows)}
    return out


def _responsiveness_lines(report: dict) -> list[str]:
    figures = report.get("responsiveness") or {}
    if not figures:
        return []
    arms = sorted(figures)
    lines = ["Responsiveness (replay.skipped; observational): of the items a user was shown k times without a "
             "click in the unclicked span before a request, the share in the arm's top-50, and the share of the "
             "top-50 in those items' leaves; mean over users [95 % interval].", "",
             "| k | measure | " + " | ".join(arms) + " |", "|---|---|" + "---|" * len(arms)]
    for group in GROUPS:
        for what, label in (("in50", "skipped items in top-50"), ("leaf50", "top-50 in their leaves")):
            column = f"skip_{group}_{what}"
            cells = [_interval_cell(figures[a].get(column)) for a in arms]
            lines.append(f"| {group[1:].replace('p', '+')} | {label} | " + " | ".join(cells) + " |")
    return lines + [""]


def _interval_cell(value: dict | None) -> str:
    return f"{_pct(value['mean'])} [{_pct(value['low'])}, {_pct(value['high'])}]" if value else "–"


def _aligned(a: dict[str, float], b: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """Two arms' per-user means over the users both answered (a failed call leaves a user out)."""
    users = sorted(a.keys() & b.keys())
    return np.array([a[u] for u in users]), np.array([b[u] for u in users])


def _state(out_dir: Path) -> dict:
    path = Path(out_dir) / "state.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _after_warm_up(rows: list[dict], state: dict, warm_days: float | None) -> tuple[list[dict], float]:
    """The rows scored after the warm-up days, and the warm-up used."""
    if warm_days is None:
        warm_days = float(state.get("options", {}).get("warm_days", 0.0))
    if warm_days <= 0:
        return rows, 0.0
    # Runs recorded before log_start_ms: the first scored request, minutes after the log's first event.
    start = state.get("log_start_ms") or min(r["ts_ms"] for r in rows)
    kept = [r for r in rows if r["ts_ms"] >= start + warm_days * DAY_MS]
    if not kept:
        raise ReportError(f"no scored request after {warm_days:g} warm-up days")
    return kept, warm_days


def _gate_record(state: dict) -> dict | None:
    gate = state.get("learner_gate")
    return None if gate is None else gate | {"max_learner_lag": state["options"].get("max_learner_lag")}


def _gate_lines(report: dict) -> list[str]:
    gate = report.get("learner_gate")
    if gate is None:
        return ["The replay did not wait for the learners (their lag behind the log is not known)."]
    return [f"Before scoring a slice the replay waited until every learner was within {gate['max_learner_lag']:,} "
            f"samples of the workers: it waited {gate['waits']:,} times, {gate['wait_s']:,.0f} s in all; the "
            f"largest lag found was {gate['max_lag_seen']:,} samples."]


def _over_time(rows: list[dict], arms: list[str], first_day: int) -> dict:
    """Per metric and arm: day index -> (mean, low, high) over that day's users."""
    out: dict = {}
    for metric in PLOTTED:
        out[metric] = {}
        for arm in arms:
            days: dict[int, list[dict]] = defaultdict(list)
            for r in rows:
                if r["arm"] == arm:
                    days[r["ts_ms"] // DAY_MS - first_day].append(r)
            series = []
            for day in sorted(days):
                values = per_user(days[day], metric).get(arm)
                if values is not None and len(values) >= 2:
                    est = arm_estimate(values, n_boot=300)
                    series.append([day, est.mean, est.low, est.high])
            out[metric][arm] = series
    return out


def _plots(report: dict, out_dir: Path) -> None:
    plt = pyplot()
    for metric, arms in report["over_time"].items():
        fig, ax = plt.subplots(figsize=(7, 3.6))
        for arm, series in sorted(arms.items()):
            if not series:
                continue
            s = np.array(series)
            ax.plot(s[:, 0], s[:, 1], marker="o", label=arm)
            ax.fill_between(s[:, 0], s[:, 2], s[:, 3], alpha=0.2)
        ax.set_xlabel("event-time day of the log")
        ax.set_ylabel(LABELS[metric])
        ax.set_title(f"{LABELS[metric]} per arm over time (daily mean, 95 % CI over users)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / f"{metric}.png", dpi=110)
        plt.close(fig)


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"
