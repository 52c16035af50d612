"""#28: a torch-rechub peer trained at other Adam learning rates on a world's validation days (the peer
check's split: the test days held out unread), to find a peer recipe that fails at a large catalogue.

Each (peer, lr) row is `learner.peers.train_and_evaluate_peer` with only the peer's lr replaced; its
run.json and eval.json go to OUT/<world>-<peer>-<lr>/ and one line per row to OUT/peer_lr.md.

    .venv/bin/python bench/peer_lr.py --data var/family/catalogue-50k --peers sasrec,hstu,narm --lrs 0.01
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import learner.peers as peers  # noqa: E402
from learner.data import build_offline_data  # noqa: E402
from learner.offline import train_settings  # noqa: E402
from learner.split import DEFAULT_TEST_DAYS, Split  # noqa: E402
from xdm.config import load_config  # noqa: E402

N_BOOT, SEED = 200, 7


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a world's log folder")
    parser.add_argument("--peers", default=",".join(peers.PEERS))
    parser.add_argument("--lrs", default="0.001,0.01")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "plugin28" / "peer-lr")
    args = parser.parse_args(argv)
    cfg = load_config()
    data = build_offline_data(Split(args.data, cfg.windows, cfg.samples, DEFAULT_TEST_DAYS).validation(), False)
    settings = train_settings(cfg.learner)
    for name in args.peers.split(","):
        for lr in (float(x) for x in args.lrs.split(",")):
            out = args.out / f"{args.data.name}-{name}-{lr}"
            started = time.monotonic()
            result = peers.train_and_evaluate_peer(name, data, out, settings, N_BOOT, SEED, progress=False, lr=lr)
            losses = [round(e["loss"], 2) for e in json.loads((out / "run.json").read_text())["loss_curve"]]
            line = (f"| {args.data.name} | {name} | {lr} | {result['summary']['hr@50']['mean']:.2%} | "
                    f"{result['summary']['mrr@50']['mean']:.2%} | {losses} | {time.monotonic() - started:.0f} s |")
            print(line, flush=True)
            with (args.out / "peer_lr.md").open("a") as report:
                report.write(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
