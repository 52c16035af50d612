"""#28's tables, assembled from stored evaluations alone, as docs/experiments/plugin-protocol.md declares.

For each world folder under --runs (var/plugin28/<world>/, written by bench/plugin_runs.py with the
protocol's own `xdm train / evaluate / ablate` commands) this reads every row's eval.json, the plug-in
rows' λ choice from run.json, the popularity floor and the peers from peers/ablation.json and the peers'
eval.json, and the world's window-signal class from bench/window_signal.py's JSON. It computes nothing
but `learner.offline.compare` (paired bootstrap over common test users) over those evaluations:

- per world: every row's HR@50 / MRR@50 (and @80) with 95 % intervals, the chosen λ, and each plug-in
  row's lift over its own base (xdm-B vs B; xdm vs sdm on SDM);
- on the default world (seed7/8/9 folders): each side the per-user mean of its three seeds;
  the best plug-in row (highest validation HR@50 at its chosen λ, seed 7) vs each peer;
- the goals: intervals of goal 1 whose upper bound is below 0 (of all that exist), goal 2 per
  signal world and base, goal 3 on the default world.

A world whose rows are not all there yet is tabled with what it has and marked incomplete; nothing is
filled in. Writes OUT/<world>/table.md + table.json + lifts.png and OUT/summary.md + summary.json.

    .venv/bin/python bench/plugin_tables.py --runs var/plugin28 --signal bench/results/window_signal/window_signal.json \
        --out bench/results/plugin28
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from learner.evaluation_stats import DEFAULT_BOOT  # noqa: E402
from learner.offline import average_evaluations, compare, format_lift, load_evaluation  # noqa: E402
from xdm.plotting import pyplot  # noqa: E402

BASES = ("sdm", "sasrec", "gru4rec", "hstu")
PEERS = ("rechub-sasrec", "rechub-gru4rec", "rechub-narm", "rechub-hstu")
GOAL_KEYS = ("hr@50", "mrr@50")
SHOWN_KEYS = ("hr@50", "mrr@50", "hr@80", "mrr@80")
DEFAULT_WORLD = "world48k10d"
SEEDS = ("seed8", "seed9")  # the default world's other training seeds, declared (seed 7 is the world's folder)
NO_SIGNAL_BY_CONSTRUCTION = "no-signal-window"
SIGNAL, NO_SIGNAL, UNKNOWN = "signal", "no signal", "not measured"


def plugin_row(base: str) -> str:
    """The plug-in on `base` as the rows are named (xdm on SDM, xdm-B on the others)."""
    return "xdm" if base == "sdm" else f"xdm-{base}"


def signal_classes(path: Path | None) -> dict[str, str]:
    """World name -> signal / no signal, from bench/window_signal.py's JSON (HR@50 lift's interval)."""
    if path is None or not path.exists():
        return {}
    classes = {}
    for world in json.loads(path.read_text())["worlds"]:
        lift = world["lift"]["hr@50"]
        classes[world["name"]] = SIGNAL if lift["low"] > 0 else NO_SIGNAL
    classes[NO_SIGNAL_BY_CONSTRUCTION] = NO_SIGNAL  # declared: whatever the measure says
    return classes


def _evaluation(run_dir: Path) -> dict[str, Any] | None:
    return load_evaluation(run_dir) if (run_dir / "eval.json").exists() else None


def _run(run_dir: Path) -> dict[str, Any]:
    """The row's run.json, or {} where it has none."""
    run = run_dir / "run.json"
    return json.loads(run.read_text()) if run.exists() else {}


def _choice(run_dir: Path) -> dict[str, Any] | None:
    return _run(run_dir).get("choice")


def _dense_optimizer(run_dir: Path) -> str:
    """What trained the row's layers besides the tables; runs from before learner.dense_optimizer: AdaGrad."""
    return _run(run_dir).get("dense_optimizer", "adagrad")


def world_evaluations(folder: Path) -> dict[str, dict[str, Any]]:
    """Row name -> evaluation for one seed's folder: our rows, then the peers of peers/."""
    evals = {}
    for row in (*BASES, *(plugin_row(b) for b in BASES)):
        found = _evaluation(folder / row)
        if found is not None:
            evals[row] = found
    for peer in PEERS:
        found = _evaluation(folder / "peers" / peer)
        if found is not None:
            evals[peer] = found
    return evals


def floor_summary(folder: Path) -> dict[str, Any] | None:
    """The popularity floor's summary, as `xdm ablate` stored it (no per-user file is written for it)."""
    report = folder / "peers" / "ablation.json"
    return json.loads(report.read_text())["summary"].get("pop") if report.exists() else None


def peer_check(world: Path) -> dict[str, Any] | None:
    """The declared check on validation days: each peer's HR@50 beside the floor's, and those below it."""
    report = world / "peer-check" / "ablation.json"
    if not report.exists():
        return None
    summary = json.loads(report.read_text())["summary"]
    floor = summary["pop"]["hr@50"]["mean"]
    peers = {p: summary[p]["hr@50"]["mean"] for p in PEERS if p in summary}
    return {"floor_hr50": floor, "peers_hr50": peers, "below_floor": [p for p, v in peers.items() if v < floor]}


def _seed_folders(world: Path) -> list[Path]:
    """Seed 7 in the world's folder, the declared other seeds in seed8/ and seed9/ (the protocol's layout)."""
    return [world, *(world / s for s in SEEDS if (world / s).is_dir())]


def assemble_world(world: Path, signal: str, n_boot: int) -> dict[str, Any]:
    """One world's table: rows, summaries, λ choices, lifts vs own base, peers (and goal 3 when seeded)."""
    folders = _seed_folders(world)
    per_seed = [world_evaluations(f) for f in folders]
    rows = [r for r in (*BASES, *(plugin_row(b) for b in BASES), *PEERS) if all(r in e for e in per_seed)]
    merged = {r: average_evaluations([e[r] for e in per_seed]) for r in rows}
    table: dict[str, Any] = {
        "world": world.name, "signal": signal, "seeds": ["seed7", *(f.name for f in folders[1:])],
        "rows": rows, "missing": [r for r in (*BASES, *(plugin_row(b) for b in BASES), *PEERS) if r not in rows],
        "summary": {r: _summary(merged[r], per_seed, r, n_boot) for r in rows},
        "floor": floor_summary(folders[0]),
        "peer_check": peer_check(world),
        "choices": {r: _choice(folders[0] / r) for r in (plugin_row(b) for b in BASES) if r in rows},
        "adam_rows": [r for r in (*BASES, *(plugin_row(b) for b in BASES))
                      if r in rows and _dense_optimizer(folders[0] / r) == "adam"],
        "lift_vs_own_base": {},
    }
    for base in BASES:
        plug = plugin_row(base)
        if base in merged and plug in merged:
            table["lift_vs_own_base"][base] = compare(merged[base], merged[plug], n_boot)["lift"]
    if len(folders) > 1:
        table["best_plugin"], table["best_vs_peers"] = _best_vs_peers(folders[0], merged, n_boot)
    return table


def _summary(merged: dict[str, Any], per_seed: list[dict[str, Any]], row: str, n_boot: int) -> dict[str, Any]:
    """The row's stored summary (one seed); with seeds, each seed's means beside the merged per-user mean."""
    if len(per_seed) == 1:
        return {k: per_seed[0][row]["summary"][k] for k in SHOWN_KEYS}
    return {k: {"mean": float(np.mean(merged["per_user"][k])),
                "seeds": [e[row]["summary"][k]["mean"] for e in per_seed]} for k in SHOWN_KEYS}


def _best_vs_peers(seed7: Path, merged: dict[str, Any], n_boot: int) -> tuple[str | None, dict[str, Any]]:
    """Goal 3: the plug-in row with the best validation HR@50 at its chosen λ (seed 7's run.json), vs peers."""
    scored = {}
    for base in BASES:
        choice = _choice(seed7 / plugin_row(base))
        if choice and plugin_row(base) in merged and choice.get("validation"):
            scored[plugin_row(base)] = choice["validation"][str(choice["value"])]["hr@50"]
    if not scored:
        return None, {}
    best = max(sorted(scored), key=lambda r: scored[r])
    return best, {peer: compare(merged[peer], merged[best], n_boot)["lift"] for peer in PEERS if peer in merged}


# ------------------------------------------------------------------------------------------------ goals


def goals(tables: list[dict[str, Any]]) -> dict[str, Any]:
    """The declared goals, counted over the worlds tabled so far."""
    intervals = below = 0
    never_below: list[str] = []
    above: dict[str, dict[str, bool]] = {}
    for t in tables:
        for base, lift in t["lift_vs_own_base"].items():
            for key in GOAL_KEYS:
                intervals += 1
                if lift[key]["high"] < 0:
                    below += 1
                    never_below.append(f"{t['world']}: {plugin_row(base)} vs {base} {key}")
            if t["signal"] == SIGNAL:
                above.setdefault(t["world"], {})[base] = lift["hr@50"]["low"] > 0
    goal3 = {}
    for t in tables:
        for peer, lift in t.get("best_vs_peers", {}).items():
            goal3[peer] = all(lift[k]["low"] > 0 for k in GOAL_KEYS)
    return {
        "goal1": {"intervals": intervals, "below_zero": below, "which": never_below, "met": intervals > 0 and below == 0},
        "goal2": {"per_world": above, "met_count": sum(v for w in above.values() for v in w.values()),
                  "count": sum(len(w) for w in above.values())},
        "goal3": {"best_plugin": next((t.get("best_plugin") for t in tables if "best_plugin" in t), None),
                  "per_peer": goal3, "met": bool(goal3) and all(goal3.values()) and len(goal3) == len(PEERS)},
    }


# ---------------------------------------------------------------------------------------------- writing


def _cell(interval: dict[str, Any] | None, key: str) -> str:
    if interval is None or key not in interval:
        return "–"
    value = interval[key]
    if "seeds" in value:
        return f"{value['mean']:.4f} (seeds {', '.join(f'{s:.4f}' for s in value['seeds'])})"
    return f"{value['mean']:.4f} [{value['low']:.4f}, {value['high']:.4f}]"


def format_world(t: dict[str, Any]) -> str:
    lines = [f"# {t['world']}: the plug-in vs its own base", "",
             f"Window: **{t['signal']}** (bench/window_signal.py, validation days). Seeds: {', '.join(t['seeds'])}.",
             f"Dense layers: {_optimisers(t)}."]
    if t["missing"]:
        lines += ["", f"**Incomplete**: no evaluation yet for {', '.join(t['missing'])}."]
    lines += ["", "| row | λ | " + " | ".join(k.upper() for k in SHOWN_KEYS) + " |", "|---|---|" + "---|" * len(SHOWN_KEYS)]
    if t["floor"]:
        lines.append("| pop (floor) | | " + " | ".join(_cell(t["floor"], k) for k in SHOWN_KEYS) + " |")
    for row in t["rows"]:
        choice = t["choices"].get(row)
        lam = f"{choice['value']:g} ({choice['how']})" if choice else ""
        lines.append(f"| {row} | {lam} | " + " | ".join(_cell(t["summary"][row], k) for k in SHOWN_KEYS) + " |")
    check = t.get("peer_check")
    if check:
        below = ", ".join(check["below_floor"]) or "none"
        lines += ["", f"Peer check on validation days (declared): floor HR@50 {check['floor_hr50']:.4f}; "
                  + ", ".join(f"{p} {v:.4f}" for p, v in check["peers_hr50"].items()) + f"; below the floor: {below}."]
    lines += ["", "Lift of the plug-in over its own base (paired, 95 % interval over common test users):", "",
              "| base | plug-in | HR@50 | MRR@50 |", "|---|---|---|---|"]
    for base, lift in t["lift_vs_own_base"].items():
        lines.append(f"| {base} | {plugin_row(base)} | {format_lift(lift['hr@50'])} | {format_lift(lift['mrr@50'])} |")
    if t.get("best_vs_peers"):
        lines += ["", f"Best plug-in row by validation HR@50: **{t['best_plugin']}**; its lift over each peer:", "",
                  "| peer | HR@50 | MRR@50 |", "|---|---|---|"]
        for peer, lift in t["best_vs_peers"].items():
            lines.append(f"| {peer} | {format_lift(lift['hr@50'])} | {format_lift(lift['mrr@50'])} |")
    return "\n".join(lines) + "\n"


def _optimisers(t: dict[str, Any]) -> str:
    """Which of our rows trained their dense layers with Adam (learner.dense_optimizer), the rest AdaGrad."""
    adam = t.get("adam_rows") or []
    return f"Adam on {', '.join(adam)}, AdaGrad on the other rows" if adam else "AdaGrad on every row"


def plot_world(t: dict[str, Any], path: Path) -> None:
    """Lift of each plug-in over its own base, HR@50 and MRR@50, with 95 % intervals."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3))
    bases = list(t["lift_vs_own_base"])
    for offset, key in ((-0.15, "hr@50"), (0.15, "mrr@50")):
        lifts = [t["lift_vs_own_base"][b][key] for b in bases]
        xs = [i + offset for i in range(len(bases))]
        ys = [100 * lift["lift"] for lift in lifts]
        err = [[100 * (lift["lift"] - lift["low"]) for lift in lifts], [100 * (lift["high"] - lift["lift"]) for lift in lifts]]
        ax.errorbar(xs, ys, yerr=err, fmt="o", capsize=3, label=key.upper())
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(range(len(bases)), [f"{plugin_row(b)}\nvs {b}" for b in bases])
    ax.set_ylabel("lift, % (95 % CI)")
    ax.set_title(f"{t['world']} (window: {t['signal']})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_summary(tables: list[dict[str, Any]], g: dict[str, Any]) -> str:
    lines = ["# #28: the plug-in vs its own base, every world tabled so far", "",
             "Protocol: docs/experiments/plugin-protocol.md. Lifts of HR@50 / MRR@50, 95 % paired intervals.", "",
             "| world | window | " + " | ".join(f"{plugin_row(b)} vs {b}" for b in BASES) + " | dense layers | complete |",
             "|---|---|" + "---|" * len(BASES) + "---|---|"]
    for t in tables:
        cells = []
        for b in BASES:
            lift = t["lift_vs_own_base"].get(b)
            cells.append(f"{format_lift(lift['hr@50'])} / {format_lift(lift['mrr@50'])}" if lift else "–")
        lines.append(f"| [{t['world']}]({t['world']}/table.md) | {t['signal']} | " + " | ".join(cells)
                     + f" | {_optimisers(t)} | {'yes' if not t['missing'] else 'no'} |")
    g1, g2, g3 = g["goal1"], g["goal2"], g["goal3"]
    lines += ["", f"- Goal 1 (never significantly below its base): {g1['below_zero']} of {g1['intervals']} intervals "
              f"lie below 0{': ' + '; '.join(g1['which']) if g1['which'] else ''}.",
              f"- Goal 2 (above its base where the window carries signal): {g2['met_count']} of {g2['count']} "
              "(world, base) pairs with the HR@50 interval above 0.",
              f"- Goal 3 (best plug-in row above every peer on the default world): "
              + (f"{g3['best_plugin']}; " + ", ".join(f"{p}: {'met' if ok else 'not met'}" for p, ok in g3["per_peer"].items())
                 if g3["per_peer"] else "not tabled yet") + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, default=Path("var/plugin28"), help="one folder per world")
    parser.add_argument("--signal", type=Path, default=Path("bench/results/window_signal/window_signal.json"))
    parser.add_argument("--default-signal", choices=(SIGNAL, NO_SIGNAL, UNKNOWN), default=UNKNOWN,
                        help=f"the default world's class (xdm stats {DEFAULT_WORLD} --window-signal)")
    parser.add_argument("--boot", type=int, default=DEFAULT_BOOT)
    parser.add_argument("--out", type=Path, default=Path("bench/results/plugin28"))
    args = parser.parse_args(argv)
    classes = {**signal_classes(args.signal), DEFAULT_WORLD: args.default_signal}
    tables = []
    for world in sorted(p for p in args.runs.iterdir() if p.is_dir()):
        table = assemble_world(world, classes.get(world.name, UNKNOWN), args.boot)
        if not table["rows"]:
            continue
        tables.append(table)
        out = args.out / world.name
        out.mkdir(parents=True, exist_ok=True)
        (out / "table.json").write_text(json.dumps(table, indent=2))
        (out / "table.md").write_text(format_world(table))
        if table["lift_vs_own_base"]:
            plot_world(table, out / "lifts.png")
    summary = goals(tables)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps({"worlds": [t["world"] for t in tables], **summary}, indent=2))
    (args.out / "summary.md").write_text(format_summary(tables, summary))
    print(format_summary(tables, summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
