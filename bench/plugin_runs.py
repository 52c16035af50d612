"""#28's runs, world by world, with the commands docs/experiments/plugin-protocol.md declares.

For each world (a member of replay/world_family.py, or `world48k10d`, the default world) this runs, in
order and skipping whatever a previous call finished (a stopped run goes on where it stopped):

1. `xdm simulate` (the member's own command line) unless the folder holds it already;
2. the declared peer check on validation days: `xdm ablate --variants sdm --peers` on the validation
   split (the last --test-days held out unread, the days before them scored) into RUNS/W/peer-check;
   taken with `Split.validation()` instead of writing a copy of the log without its last days: the
   same cut, no second 200 MB log;
3. `xdm train --model M` then `xdm evaluate` for the four bases and the four plug-in rows (each plug-in
   row chooses λ on validation days by itself: learner/recipe.py);
4. `xdm ablate --variants sdm --peers --resume` into RUNS/W/peers (the peers and the popularity floor);
5. bench/plugin_tables.py over every world so far.

--peer-check-only stops after step 2. Each command's output goes to RUNS/W/logs/; one line per step is printed with its time.

    .venv/bin/python bench/plugin_runs.py --worlds exposure-follows-clicks,no-signal-window --jobs 1
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from learner.ablation import PEER_ROW_PREFIX, ablate  # noqa: E402
from learner.offline import train_settings  # noqa: E402
from learner.peers import PEERS, recipe  # noqa: E402
from learner.split import DEFAULT_TEST_DAYS, Split  # noqa: E402
from replay.world_family import FAMILY  # noqa: E402
from xdm.config import load_config  # noqa: E402
from xdm.model_config import model_overrides  # noqa: E402

XDM = str(Path(sys.executable).with_name("xdm"))
ROWS = ("sdm", "sasrec", "gru4rec", "hstu", "xdm", "xdm-sasrec", "xdm-gru4rec", "xdm-hstu")
DEFAULT_WORLD = "world48k10d"
# Worlds whose test days were read before the protocol's amendment of 2026-12-08 (learner.dense_optimizer,
# "auto" since: Adam on the SASRec and HSTU bases' dense layers): their rows keep the recipe they were
# read with, AdaGrad on every parameter, so the declared commands give their tables again.
ADAGRAD_WORLDS = ("exposure-follows-clicks", "no-signal-window", "short-sessions")


def say(world: str, step: str, started: float) -> None:
    print(f"{time.strftime('%H:%M:%S')} {world}: {step} ({time.monotonic() - started:.0f} s)", flush=True)


def run(cmd: list[str], log: Path) -> None:
    """One declared command, its output in `log`; a failure stops the world with the log's name."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        out.write(" ".join(cmd) + "\n")
        out.flush()
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[1:3])} failed (exit {done.returncode}); see {log}")


def _stored(path: Path) -> dict:
    """A JSON record a run left (run.json, row.json), or {} where it left none."""
    return json.loads(path.read_text()) if path.exists() else {}


def _has_every_peer(report: Path) -> bool:
    """Whether an ablation report holds a row for each peer learner/peers.py has now, trained with the
    peer's recipe of now (resume trains the rest, and retrains a peer whose recipe changed)."""
    if not report.exists():
        return False
    rows = json.loads(report.read_text())["summary"]
    return all(PEER_ROW_PREFIX + peer in rows
               and _stored(report.parent / (PEER_ROW_PREFIX + peer) / "row.json").get("recipe") == recipe(peer)
               for peer in PEERS)


def world_data(name: str, worlds: Path) -> tuple[Path, list[str]]:
    """The world's log folder and the command that writes it."""
    if name == DEFAULT_WORLD:
        folder = Path("var") / DEFAULT_WORLD
        return folder, [XDM, "simulate", "--out", str(folder)]
    folder = worlds / name
    return folder, [XDM, "simulate", "--family", name, "--out", str(folder)]


def peer_check(data: Path, out: Path, jobs: int) -> None:
    """Step 2: the peers and SDM on the validation split (module docstring)."""
    if _has_every_peer(out / "ablation.json"):
        return
    cfg = load_config()  # what `xdm ablate` reads: the config's window, sample and learner settings
    split = Split(data, cfg.windows, cfg.samples, DEFAULT_TEST_DAYS).validation()
    settings = train_settings(cfg.learner)
    ablate(split, out, variants=("sdm",), settings=settings, model_overrides=model_overrides(cfg.model), peers=True,
           workers=jobs, resume=True, progress=False)


def recipe_sets(name: str) -> list[str]:
    """`xdm` options that fix a world's recipe where it differs from the defaults (ADAGRAD_WORLDS)."""
    return ["--set", "learner.dense_optimizer=adagrad"] if name in ADAGRAD_WORLDS else []


def run_world(name: str, args: argparse.Namespace) -> None:
    started = time.monotonic()
    data, simulate_cmd = world_data(name, args.worlds)
    runs = args.runs / name
    logs = runs / "logs"
    if not (data / "events.csv").exists():
        run(simulate_cmd, logs / "simulate.log")
        say(name, "simulated", started)
    peer_check(data, runs / "peer-check", args.jobs)
    say(name, "peer check on validation days", started)
    if args.peer_check_only:
        return
    for row in ROWS:
        out = runs / row
        if "choice" not in _stored(out / "run.json"):  # written last by `xdm train`: the row finished
            run([XDM, *recipe_sets(name), "train", "--data", str(data), "--model", row, "--out", str(out),
                 "--jobs", str(args.jobs)], logs / f"train-{row}.log")
        if not (out / "eval.json").exists():
            run([XDM, "evaluate", str(out)], logs / f"evaluate-{row}.log")
        say(name, f"{row} trained and evaluated", started)
    if not _has_every_peer(runs / "peers" / "ablation.json"):
        run([XDM, *recipe_sets(name), "ablate", "--data", str(data), "--variants", "sdm", "--peers",
             "--out", str(runs / "peers"), "--jobs", str(args.jobs), "--resume"], logs / "ablate-peers.log")
    say(name, "peers and floor", started)
    tables(args)


def tables(args: argparse.Namespace) -> None:
    run([sys.executable, "bench/plugin_tables.py", "--runs", str(args.runs), "--out", str(args.out)],
        args.runs / "tables.log")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worlds-list", "--worlds", dest="names", required=True,
                        help=f"comma-separated: members of replay/world_family.py or {DEFAULT_WORLD}")
    parser.add_argument("--family-dir", dest="worlds", type=Path, default=Path("var/family"))
    parser.add_argument("--runs", type=Path, default=Path("var/plugin28"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/plugin28"))
    parser.add_argument("--jobs", type=int, default=1, help="models trained side by side")
    parser.add_argument("--peer-check-only", action="store_true",
                        help="steps 1-2 only (validation days: no test day is read), e.g. to check the peers "
                             "on a large catalogue ahead of the world's turn; a later full run reuses it")
    args = parser.parse_args(argv)
    known = set(FAMILY) | {DEFAULT_WORLD}
    names = [n.strip() for n in args.names.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        parser.error(f"unknown world(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    for name in names:
        run_world(name, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
