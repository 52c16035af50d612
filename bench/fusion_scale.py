"""How much of the user vector the unclicked window moves, per trained row: a diagnosis for #28.

Eq. 8 fuses z = h - g ⊙ n. Whether that subtraction is a correction or a rewrite of h depends on how large
g ⊙ n is against h, which differs by base: SDM's h comes out of its gate unbounded, the sequence bases'
h is tanh(LayerNorm(.)) at the newest click (learner/bases.py), and n is tanh(f(mean q_i)) on every base
(eq. 3). For each run folder (from `xdm train`), on the validation users of the run's own split (the
test period held out unread, the days before it scored, each user's windows at their validation anchor):
the mean L2 norms of h, n and g ⊙ n, the share ||h - z|| / ||h||, the mean gate g and cos(h, z). Rows
without the plug-in have z = h and report only ||h||. Writes OUT/fusion_scale.json and .md, prints the table.

    .venv/bin/python bench/fusion_scale.py --data D --runs var/plugin28/D/xdm var/plugin28/D/xdm-hstu ... \
        --out bench/results/plugin28/D/diagnosis
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from learner.batch import collate  # noqa: E402
from learner.data import OfflineData, build_offline_data  # noqa: E402
from learner.offline import load_run  # noqa: E402
from learner.split import Split  # noqa: E402

BATCH = 256


def measure_run(run_dir: Path, data_dir: Path | None, cache: str | None,
                splits: dict[Split, OfflineData]) -> dict[str, Any]:
    run, trainer = load_run(run_dir)
    split = Split.of_run(run, data_dir, cache or None).validation()
    if split not in splits:  # rows trained on the same log share one built split, as in bench/responsiveness.py
        splits[split] = build_offline_data(split, progress=False)
    data = splits[split]
    model = trainer.model.eval()
    sums: dict[str, float] = {}
    users = 0
    with torch.inference_mode():
        for start in range(0, len(data.test), BATCH):
            batch = collate([data.test[u] for u in range(start, min(start + BATCH, len(data.test)))],
                            trainer.vocab, grow=False)
            out = model(batch)
            _accumulate(sums, _per_user(model, out))
            users += len(out.h)
    return {"run": str(run_dir), "variant": run["variant"], "users": users,
            **{name: total / users for name, total in sums.items()}}


def _per_user(model, out) -> dict[str, torch.Tensor]:
    h_norm = out.h.norm(dim=-1)
    values = {"h_norm": h_norm}
    if out.n is None or not model.reads_unclicked:
        return values
    moved = out.h - out.z  # g ⊙ n under eq. 8, n under eq. 6
    values.update(n_norm=out.n.norm(dim=-1), moved_norm=moved.norm(dim=-1),
                  moved_share=moved.norm(dim=-1) / h_norm.clamp(min=1e-9),
                  cos_h_z=torch.nn.functional.cosine_similarity(out.h, out.z, dim=-1))
    if model.confidence is not None:
        values["gate"] = torch.sigmoid(model.confidence.confidence(torch.cat([out.h, out.n], dim=-1))).mean(dim=-1)
    return values


def _accumulate(sums: dict[str, float], values: dict[str, torch.Tensor]) -> None:
    for name, value in values.items():
        sums[name] = sums.get(name, 0.0) + float(value.sum())


COLUMNS = (("h_norm", "‖h‖"), ("n_norm", "‖n‖"), ("moved_norm", "‖g⊙n‖"), ("moved_share", "‖h−z‖/‖h‖"),
           ("gate", "mean g"), ("cos_h_z", "cos(h, z)"))


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| row | users | " + " | ".join(label for _, label in COLUMNS) + " |",
             "|---|---:|" + "---:|" * len(COLUMNS)]
    for r in rows:
        cells = [f"{r[key]:.3f}" if key in r else "–" for key, _ in COLUMNS]
        lines.append(f"| {r['variant']} | {r['users']:,} | " + " | ".join(cells) + " |")
    lines += ["", "Means over the validation users of each run's split (labels read only to build c, which "
              "no column uses). ‖h−z‖/‖h‖: how much of h the unclicked part moves (eq. 8)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, nargs="+", required=True, help="Run folders from `xdm train`.")
    parser.add_argument("--data", type=Path, default=None, help="The log (default: each run's recorded one).")
    parser.add_argument("--cache", default=str(ROOT / "var" / "offline-cache"), help="Built splits ('' = none).")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    splits: dict[Split, OfflineData] = {}
    rows = [measure_run(run_dir, args.data, args.cache, splits) for run_dir in args.runs]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fusion_scale.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                            "rows": rows}, indent=2) + "\n")
    (args.out / "fusion_scale.md").write_text(format_table(rows))
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
