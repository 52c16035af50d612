"""The report of a chaos run (bench/chaos.py): failed calls per fault, recovery times, the invariants;
as JSON, a printed table and a plot.

A Recall call fails with an RPC error (a fallback answer is counted apart, as degraded). A failed or
degraded call is put on the fault whose outage (signal to recovery) it overlaps; failures that overlap no
fault are reported as such.
"""

from __future__ import annotations

import json
import os
import platform
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np

from bench.chaos_faults import KINDS, Fault
from bench.chaos_traffic import Call
from xdm.plotting import pyplot


def build_report(settings: dict, faults: list[Fault], calls: list[Call], span: tuple[float, float], fed: int,
                 invariants: dict) -> dict:
    outside = attribute(faults, calls)
    by_fault = {}
    for kind in settings["faults"]:
        for mode in settings["modes"]:
            group = [f for f in faults if (f.kind, f.mode) == (kind, mode)]
            if group:
                by_fault[f"{mode} {kind}"] = _summary(group)
    answered = [c for c in calls if c.code == "OK"]
    violations = [f"{name}: {json.dumps(_finding(result))}" for name, result in invariants.items() if not result["ok"]]
    violations += [f"{f.mode} {f.kind} at {f.injected_at:.1f} s did not recover: {f.note}"
                   for f in faults if f.recovered_at is None]
    return {
        "settings": settings, "machine": platform.machine(), "cores": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "chaos_span_s": [round(span[0], 1), round(span[1], 1)], "events_fed": fed,
        "faults": [{**asdict(f), "outage_s": f.outage_s, "after_action_s": f.after_action_s} for f in faults],
        "by_fault": by_fault,
        "calls": {"total": len(calls), "ok": len(answered), "failed": len(calls) - len(answered),
                  "fallback": sum(c.fallback for c in answered), "failed_outside_faults": outside,
                  "failed_by_code": dict(Counter(c.code for c in calls if c.code != "OK")),
                  "p50_ms": _pct([c.seconds for c in answered], 50), "p99_ms": _pct([c.seconds for c in answered], 99)},
        "invariants": invariants,
        "violations": violations,
        "ok": not violations,
        "timeline": _timeline(calls),
    }


def attribute(faults: list[Fault], calls: list[Call]) -> int:
    """Count each failed or degraded call on the fault whose outage it overlaps; returns the failures that
    overlap none."""
    outside = 0
    for call in calls:
        if call.code == "OK" and not call.fallback:
            continue
        end = call.at + call.seconds
        fault = next((f for f in faults if call.at <= (f.recovered_at or float("inf")) and end >= f.injected_at), None)
        if fault is None:
            outside += call.code != "OK"
        elif call.code != "OK":
            fault.failed_calls += 1
        else:
            fault.degraded_calls += 1
    return outside


def _summary(group: list[Fault]) -> dict:
    outages = [f.outage_s for f in group if f.outage_s is not None]
    after = [f.after_action_s for f in group if f.after_action_s is not None]
    return {"faults": len(group), "not_recovered": sum(f.recovered_at is None for f in group),
            "failed_calls": sum(f.failed_calls for f in group), "degraded_calls": sum(f.degraded_calls for f in group),
            "outage_p50_s": _pct(outages, 50, 1.0), "outage_p99_s": _pct(outages, 99, 1.0),
            "after_restart_p50_s": _pct(after, 50, 1.0), "after_restart_p99_s": _pct(after, 99, 1.0)}


def _finding(result: dict) -> dict:
    """A failed check's figures without its long id lists."""
    return {k: v for k, v in result.items() if not k.endswith("_ids")}


def _timeline(calls: list[Call]) -> list[dict]:
    """Per second of the run: calls started, failed, fallback answers, latency p50/p99 of answered calls."""
    by_second: dict[int, list[Call]] = {}
    for call in calls:
        by_second.setdefault(int(call.at), []).append(call)
    rows = []
    for second, group in sorted(by_second.items()):
        answered = [c.seconds for c in group if c.code == "OK"]
        rows.append({"s": second, "calls": len(group), "failed": sum(c.code != "OK" for c in group),
                     "fallback": sum(c.fallback for c in group), "p50_ms": _pct(answered, 50),
                     "p99_ms": _pct(answered, 99)})
    return rows


def _pct(values: list[float], q: float, scale: float = 1000.0) -> float | None:
    return round(float(np.percentile(values, q)) * scale, 2) if values else None


def print_report(report: dict) -> None:
    s = report["settings"]
    print(f"\nChaos run: {s['duration_s']:.0f} s of faults, seed {s['seed']}, {report['events_fed']:,} events fed "
          f"at {s['rate']:.0f}/s, {s['workers']} workers, {s['callers']} Recall callers")
    print(f"{'fault':<15} {'n':>3} {'failed':>6} {'fallback':>8} {'outage p50/p99 s':>17} "
          f"{'after restart p50/p99 s':>24} {'not recovered':>13}")
    for name, row in report["by_fault"].items():
        print(f"{name:<15} {row['faults']:>3} {row['failed_calls']:>6} {row['degraded_calls']:>8} "
              f"{_pair(row['outage_p50_s'], row['outage_p99_s']):>17} "
              f"{_pair(row['after_restart_p50_s'], row['after_restart_p99_s']):>24} {row['not_recovered']:>13}")
    c = report["calls"]
    print(f"Recall calls: {c['total']:,}, {c['failed']} failed ({c['failed_outside_faults']} outside any fault), "
          f"{c['fallback']} fallback answers; answered p50 {c['p50_ms']} ms, p99 {c['p99_ms']} ms")
    w, sa, v = (report["invariants"][k] for k in ("windows", "samples", "versions"))
    print(f"windows  {_verdict(w)}: {w['users_differing']} of {w['users']} users differ from the rules"
          + (f" {json.dumps(w['examples'])}" if w["examples"] else ""))
    print(f"samples  {_verdict(sa)}: {sa['expected']:,} expected, {sa['emitted_unique']:,} emitted "
          f"({sa['emitted_records']:,} records), {sa['lost']} lost, {sa['unexpected']} unexpected; "
          f"{sa['trained_records']:,} trained, {sa['trained_twice']} twice, {sa['never_trained']} never")
    print(f"versions {_verdict(v)}: {v['announcements']} announced ({v['first']}..{v['last']}), repeated "
          f"{v['repeated']}, not increasing {v['not_increasing']}, LATEST {v['latest']} (the last announced: "
          f"{v['latest_is_last_announced']}), kept towers vs Milvus vectors {v['kept_versions_checked']}")
    for violation in report["violations"]:
        print(f"VIOLATED {violation}")
    print("every invariant holds and every fault recovered" if report["ok"] else "")


def _verdict(result: dict) -> str:
    return "ok" if result["ok"] else "VIOLATED"


def _pair(a: float | None, b: float | None) -> str:
    return "-" if a is None else f"{a:.1f}/{b:.1f}"


def plot(report: dict, path: Path) -> None:
    """Failed calls and latency over time, each fault's outage shaded by target (hatched: SIGSTOP)."""
    plt = pyplot()
    rows = report["timeline"]
    seconds = [r["s"] for r in rows]
    end = max(seconds, default=0) + 1
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 6), sharex=True)
    top.bar(seconds, [r["failed"] for r in rows], width=1.0, color="tab:red", label="failed calls")
    top.bar(seconds, [r["fallback"] for r in rows], width=1.0, bottom=[r["failed"] for r in rows],
            color="tab:orange", label="fallback answers")
    for key, style in (("p50_ms", "-"), ("p99_ms", ":")):
        latency = [np.nan if r[key] is None else r[key] for r in rows]  # a gap where nothing was answered
        bottom.plot(seconds, latency, style, color="tab:blue", label=f"{key[:3]} latency of answered calls")
    colors = dict(zip(KINDS, ("tab:green", "tab:purple", "tab:red", "tab:brown", "tab:cyan")))
    for f in report["faults"]:
        span = (f["injected_at"], f["recovered_at"] or end)
        for ax in (top, bottom):
            ax.axvspan(*span, color=colors.get(f["kind"], "grey"), alpha=0.2, hatch="//" if f["mode"] == "stop" else None)
        top.annotate(f"{f['mode']} {f['kind']}", (span[0], 1.0), xycoords=("data", "axes fraction"), rotation=90,
                     fontsize=7, va="top")
    for ax in (top, bottom):
        for at in report["chaos_span_s"]:
            ax.axvline(at, color="black", linewidth=0.8, linestyle="--")
    top.set_ylabel("calls / s")
    top.legend(loc="upper right", fontsize=8)
    bottom.set_yscale("log")
    bottom.set_ylabel("ms")
    bottom.set_xlabel("seconds since the stack started (dashed: faults begin, end)")
    bottom.legend(loc="upper right", fontsize=8)
    s = report["settings"]
    fig.suptitle(f"Chaos run, seed {s['seed']}: Recall under faults (shaded: outage until recovered, hatched: SIGSTOP)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(report: dict, out: Path) -> Path:
    """The JSON report and its plot, named by duration and seed; returns the JSON's path."""
    out.mkdir(parents=True, exist_ok=True)
    s = report["settings"]
    stem = out / f"chaos-{s['duration_s']:.0f}s-seed{s['seed']}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    plot(report, stem.with_suffix(".png"))
    return stem.with_suffix(".json")
