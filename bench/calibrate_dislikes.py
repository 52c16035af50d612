"""Set the simulator's dislike strength on a calibration world, never on the world the table is read on.

The papers put the value of the unclicked items in one row, `w/o conf+metric` (SDM plus the unclicked
window, subtracted): +1.38 % (SRU2B, Taobao) and +1.08 % (XDM) HR@50 over SDM. The simulator's
`dislike_brands` / `dislike_depth` (replay/world.py) decide how much of that signal a log carries.
For each strength asked for, this script

1. simulates a calibration world with a seed other than the default world's (1 is refused),
2. cuts its validation split (`xdm tune`'s protocol: the last `--test-days` held out unread, the
   `--test-days` before them scored), and
3. trains SDM and `xdm_wo_conf_metric` on it and reports the paired lift with its 95 % interval,
   beside what the strength does to the log (CTR and the Table 1 window lengths of the training samples).

Worlds, splits (`--cache`) and rows are kept, so `--resume` reads back what already finished, and
`--worlds` scores worlds simulated by an earlier run with other training settings. Writes
OUT/calibration.json, .md and .png.

    .venv/bin/python bench/calibrate_dislikes.py --users 12000 --seed 2 --jobs 2 --resume \\
        --point dislike_brands=8,dislike_depth=1.0 --point dislike_brands=24,dislike_depth=1.0
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from learner.data import OfflineData, build_offline_data  # noqa: E402
from learner.evaluation_stats import DEFAULT_BOOT  # noqa: E402
from learner.offline import TrainSettings, compare, format_lift  # noqa: E402
from learner.run_pool import VARIANT, Job, run_jobs  # noqa: E402
from learner.split import DEFAULT_TEST_DAYS, TEST_ANCHORS, Split, test_windows_taken  # noqa: E402
from replay.simulate import simulate  # noqa: E402
from replay.stats import PAPER_TABLE1  # noqa: E402
from replay.world import WorldConfig  # noqa: E402
from xdm.plotting import pyplot  # noqa: E402

DEFAULT_WORLD_SEED = 1  # `xdm simulate`'s default: the world Table 2 is read on
PAPERS_HR50_LIFT = (0.0108, 0.0138)  # w/o conf+metric vs SDM, HR@50: XDM Table 2, SRU2B Table 2
ROWS = ("sdm", "xdm_wo_conf_metric")
KEYS = ("hr@50", "mrr@50")


def parse_point(text: str) -> tuple[str, ...]:
    """'dislike_brands=8,dislike_depth=1.0' -> ('dislike_brands=8', 'dislike_depth=1.0'), checked by WorldConfig."""
    items = tuple(part.strip() for part in text.split(",") if part.strip())
    WorldConfig.scaled(100, 500).with_settings(items)  # a bad field or value fails here, before anything runs
    return items


def _slug(point: tuple[str, ...]) -> str:
    return "_".join(point) if point else "off"


def _world(point: tuple[str, ...], args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    """The point's calibration world, simulated unless the same one is already on disk."""
    folder = (args.worlds or args.out) / _slug(point) / "world"
    wanted = {"users": args.users, "items": args.items, "days": args.days, "seed": args.seed, "world": list(point)}
    marker = folder / "calibration-world.json"
    if marker.exists() and json.loads(marker.read_text()).get("inputs") == wanted:
        return folder, json.loads(marker.read_text())["summary"]
    config = WorldConfig.scaled(args.users, args.items).with_settings(point)
    summary = simulate(args.users, args.items, args.days, args.seed, folder, world_config=config)
    record = {"events": summary.events, "clicks": summary.clicks, "impressions": summary.impressions,
              "seconds": round(summary.seconds, 1)}
    marker.write_text(json.dumps({"inputs": wanted, "summary": record}, indent=2))
    return folder, record


def _windows(data: OfflineData) -> dict[str, float]:
    return {kind: round(data.train.mean_length(kind), 2) for kind in ("short", "long", "unclicked")}


def calibrate_point(point: tuple[str, ...], args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    world, sim = _world(point, args)
    split = Split(world, test_days=args.test_days, test_anchor=args.test_anchor, cache_dir=args.cache or None)
    data = build_offline_data(split.validation())
    settings = TrainSettings(epochs=args.epochs)
    jobs = [Job(row, row, args.out / _slug(point) / row, VARIANT) for row in ROWS]
    results = run_jobs(jobs, data, settings, args.boot, 0, args.jobs, True, resume=args.resume)
    lift = compare(results["sdm"].evaluation, results["xdm_wo_conf_metric"].evaluation, args.boot)["lift"]
    return {
        "point": list(point),
        "ctr": sim["clicks"] / sim["impressions"],
        "windows": _windows(data),
        "validation_users": len(data.test),
        "train_samples": len(data.train),
        "summary": {row: {k: results[row].evaluation["summary"][k]["mean"] for k in KEYS} for row in ROWS},
        "lift": {k: lift[k] for k in KEYS},
        "seconds": round(time.monotonic() - started, 1),
        "reused": [row for row in ROWS if results[row].reused],
    }


def format_report(report: dict[str, Any]) -> str:
    low, high = PAPERS_HR50_LIFT
    head = ("| Dislikes | CTR | short / long / unclicked | SDM HR@50 | w/o conf+metric HR@50 lift | MRR@50 lift |\n"
            "|---|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in report["points"]:
        w = r["windows"]
        lines.append(f"| {', '.join(r['point']) or 'off'} | {r['ctr']:.2%} | {w['short']:.1f} / {w['long']:.1f} / "
                     f"{w['unclicked']:.1f} | {r['summary']['sdm']['hr@50']:.2%} | {format_lift(r['lift']['hr@50'])} | "
                     f"{format_lift(r['lift']['mrr@50'])} |")
    a = report["args"]
    taobao = " / ".join(f"{PAPER_TABLE1[k][0]:.1f}" for k in ("avg_short", "avg_long", "avg_unclicked"))
    lines += ["", f"Calibration worlds: {a['users']:,} users, {a['items']:,} items, {a['days']} days, seed {a['seed']} "
              f"(the default world's is {DEFAULT_WORLD_SEED}). Validation split: the last {a['test_days']:g} days held "
              f"out unread, the {a['test_days']:g} before them scored, {test_windows_taken(a, 'user')}; "
              f"{a['epochs']} epoch(s). Papers' target, HR@50 lift of w/o conf+metric over SDM: {low:+.2%} (XDM) "
              f"to {high:+.2%} (SRU2B). Windows: mean lengths over the training samples (Taobao, Table 1: "
              f"{taobao}). Intervals: 95 % paired bootstrap over validation users."]
    return "\n".join(lines) + "\n"


def plot_report(report: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    points = report["points"]
    labels = ["\n".join(r["point"]) or "off" for r in points]
    fig, ax = plt.subplots(figsize=(2.2 * len(points) + 3, 4))
    for offset, key in ((-0.1, "hr@50"), (0.1, "mrr@50")):
        lifts = [r["lift"][key] for r in points]
        x = [i + offset for i in range(len(points))]
        mid = [100 * lift["lift"] for lift in lifts]
        err = [[100 * (lift["lift"] - lift["low"]) for lift in lifts],
               [100 * (lift["high"] - lift["lift"]) for lift in lifts]]
        ax.errorbar(x, mid, yerr=err, fmt="o", capsize=4, label=f"{key} lift")
    low, high = PAPERS_HR50_LIFT
    ax.axhspan(100 * low, 100 * high, color="green", alpha=0.2, label="papers' HR@50 lift")
    ax.axhline(0, color="grey", lw=1)
    ax.set_xticks(range(len(points)), labels, fontsize=8)
    ax.set_ylabel("w/o conf+metric vs SDM, % (95 % CI)")
    ax.set_title(f"Dislike strength on validation days (calibration seed {report['args']['seed']})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--point", action="append", default=[], metavar="FIELD=VALUE,...",
                        help="World settings of one strength (repeatable); 'off' for none.")
    parser.add_argument("--users", type=int, default=12000)
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--days", type=int, default=10)
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--test-days", type=float, default=DEFAULT_TEST_DAYS)
    parser.add_argument("--test-anchor", choices=TEST_ANCHORS, default="cut",
                        help="Where a validation user's windows are taken (learner/data.py).")
    parser.add_argument("--cache", default="var/offline-cache")
    parser.add_argument("--boot", type=int, default=DEFAULT_BOOT)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("var/calibration"))
    parser.add_argument("--worlds", type=Path, default=None,
                        help="Folder of the calibration worlds (default: --out): score them with other settings.")
    args = parser.parse_args(argv)
    if args.seed == DEFAULT_WORLD_SEED:
        parser.error(f"--seed {DEFAULT_WORLD_SEED} is the default world's: calibrate on another world")
    if not args.point:
        parser.error("give at least one --point")
    try:
        points = [() if text == "off" else parse_point(text) for text in args.point]
    except ValueError as exc:
        parser.error(str(exc))
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "papers_hr50_lift": PAPERS_HR50_LIFT, "points": []}
    for point in points:
        report["points"].append(calibrate_point(point, args))
        (args.out / "calibration.json").write_text(json.dumps(report, indent=2))
    (args.out / "calibration.md").write_text(format_report(report))
    plot_report(report, args.out / "calibration.png")
    print(format_report(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
