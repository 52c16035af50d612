"""Where each world of the family stands on the unclicked-window axis, on validation days only.

For each member of `replay/world_family.py` this script simulates the world (unless the same one is
already in --worlds), cuts its validation split (the last --test-days held out unread, the --test-days
before them scored: `xdm tune`'s protocol) and measures the window's signal with the leaf-mixture
heuristic of learner/window_signal.py: its HR@50 and MRR@50 blind to which leaves the window holds
and reading them, and the paired lift with its 95 % interval. Also the Table 1 window lengths of the
training samples and the split's size. Writes OUT/window_signal.json and .md and prints the table.

    .venv/bin/python bench/window_signal.py --worlds var/family --out bench/results/window_signal
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

from learner.data import build_offline_data  # noqa: E402
from learner.evaluation_stats import DEFAULT_BOOT  # noqa: E402
from learner.offline import format_lift  # noqa: E402
from learner.split import DEFAULT_TEST_DAYS, Split  # noqa: E402
from learner.window_signal import BLIND, READING, window_signal  # noqa: E402
from replay.simulate import simulate  # noqa: E402
from replay.world_family import FAMILY, FamilyWorld  # noqa: E402

MARKER = "family-world.json"  # what a world folder was simulated with


def simulated_world(member: FamilyWorld, worlds: Path) -> Path:
    """The member's log folder, simulated unless the folder already holds this very member."""
    folder = worlds / member.name
    wanted = member.command(str(folder))
    marker = folder / MARKER
    if marker.exists() and json.loads(marker.read_text()).get("command") == wanted:
        return folder
    summary = simulate(member.users, member.items, member.days, member.seed, folder,
                       world_config=member.world_config(), feed=member.feed_config(), progress=False)
    marker.write_text(json.dumps({"command": wanted, "events": summary.events, "clicks": summary.clicks,
                                  "seconds": round(summary.seconds, 1)}, indent=2))
    return folder


def measure(member: FamilyWorld, args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    folder = simulated_world(member, args.worlds)
    data = build_offline_data(Split(folder, test_days=args.test_days, cache_dir=args.cache or None).validation(),
                              progress=False)
    report = window_signal(data, args.boot)
    return {"name": member.name, "differs": member.differs, "command": member.command(str(folder)),
            "windows": {kind: round(data.train.mean_length(kind), 1) for kind in ("short", "long", "unclicked")},
            "train_samples": len(data.train), "validation_users": len(data.test),
            "summary": report["summary"], "lift": report["lift"], "seconds": round(time.monotonic() - started, 1)}


def format_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = ["| World | short / long / unclicked | samples | users | HR@50 blind → reading | HR@50 lift | "
             "MRR@50 lift |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        w, hr = r["windows"], {read: r["summary"][read]["hr@50"]["mean"] for read in (BLIND, READING)}
        lines.append(f"| {r['name']} | {w['short']} / {w['long']} / {w['unclicked']} | {r['train_samples']:,} | "
                     f"{r['validation_users']:,} | {hr[BLIND]:.1%} → {hr[READING]:.1%} | "
                     f"{format_lift(r['lift']['hr@50'])} | {format_lift(r['lift']['mrr@50'])} |")
    lines += ["", f"Validation split of each world: its last {args.test_days:g} days held out unread, the "
              f"{args.test_days:g} before them scored (each validation user's windows at their first click "
              "after the cut). Heuristic: learner/window_signal.py (leaf mixture, top 50), blind to which leaves "
              "the window holds and reading them; intervals: 95 % paired bootstrap over validation users. "
              "Windows: mean lengths over the training samples."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", default=",".join(FAMILY), help="Comma-separated members (default: all).")
    parser.add_argument("--worlds", type=Path, default=ROOT / "var" / "family", help="Folder of the worlds' logs.")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "window_signal")
    parser.add_argument("--test-days", type=float, default=DEFAULT_TEST_DAYS)
    parser.add_argument("--cache", default=str(ROOT / "var" / "offline-cache"), help="Built splits ('' = none).")
    parser.add_argument("--boot", type=int, default=DEFAULT_BOOT)
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.family.split(",") if n.strip()]
    unknown = [n for n in names if n not in FAMILY]
    if unknown:
        parser.error(f"not in the family: {', '.join(unknown)}; one of {', '.join(FAMILY)}")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in names:
        rows.append(measure(FAMILY[name], args))
        print(f"{name}: HR@50 lift {format_lift(rows[-1]['lift']['hr@50'])} ({rows[-1]['seconds']:.0f} s)", flush=True)
    report = {"args": {k: str(v) for k, v in vars(args).items()}, "worlds": rows}
    (args.out / "window_signal.json").write_text(json.dumps(report, indent=2))
    (args.out / "window_signal.md").write_text(format_table(rows, args))
    print(format_table(rows, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
