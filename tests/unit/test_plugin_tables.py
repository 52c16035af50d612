"""bench/plugin_tables.py assembles #28's tables from stored evaluations and counts the declared goals."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import plugin_tables  # noqa: E402

USERS = [f"u{i}" for i in range(400)]


def _write_eval(folder: Path, variant: str, hit_rate: float, seed: int) -> None:
    """An evaluation as `xdm evaluate` writes it: per-user values in test-table order."""
    rng = np.random.default_rng(seed)
    hits = (rng.random(len(USERS)) < hit_rate).astype(float)
    per_user = {"hr@50": hits.tolist(), "mrr@50": (hits * 0.2).tolist(), "hr@80": hits.tolist(),
                "mrr@80": (hits * 0.2).tolist()}
    summary = {k: {"mean": float(np.mean(v)), "low": 0.0, "high": 1.0} for k, v in per_user.items()}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "eval.json").write_text(json.dumps({"variant": variant, "users": USERS, "per_user": per_user,
                                                  "summary": summary, "data": {"data_dir": "x"}}))


def _write_world(runs: Path, name: str, rates: dict[str, float], plugin_validation: dict[str, float]) -> Path:
    world = runs / name
    for i, (row, rate) in enumerate(rates.items()):
        folder = world / "peers" / row if row.startswith("rechub-") else world / row
        _write_eval(folder, row, rate, seed=i)
        if row in plugin_validation:
            choice = {"value": 0.03, "how": "chosen on validation days", "validation": {"0.03": {"hr@50": plugin_validation[row]}}}
            (folder / "run.json").write_text(json.dumps({"choice": choice}))
    floor = {"pop": {k: {"mean": 0.1, "low": 0.09, "high": 0.11} for k in plugin_tables.SHOWN_KEYS}}
    (world / "peers").mkdir(parents=True, exist_ok=True)
    (world / "peers" / "ablation.json").write_text(json.dumps({"summary": floor}))
    return world


def test_world_table_lifts_each_plugin_over_its_own_base_and_counts_goals(tmp_path: Path) -> None:
    rates = {"sdm": 0.4, "xdm": 0.6, "sasrec": 0.4, "xdm-sasrec": 0.4, "gru4rec": 0.4, "xdm-gru4rec": 0.4,
             "hstu": 0.6, "xdm-hstu": 0.3}
    world = _write_world(tmp_path, "exposure-follows-clicks", rates, {"xdm": 0.5})
    table = plugin_tables.assemble_world(world, plugin_tables.SIGNAL, n_boot=200)
    assert table["missing"] == list(plugin_tables.PEERS)
    assert table["lift_vs_own_base"]["sdm"]["hr@50"]["low"] > 0  # xdm clearly above sdm
    assert table["lift_vs_own_base"]["hstu"]["hr@50"]["high"] < 0  # xdm-hstu clearly below hstu
    g = plugin_tables.goals([table])
    assert g["goal1"]["intervals"] == 8
    assert g["goal1"]["below_zero"] == 2 and all("xdm-hstu" in w for w in g["goal1"]["which"])
    assert g["goal2"]["per_world"]["exposure-follows-clicks"]["sdm"] is True
    assert g["goal2"]["per_world"]["exposure-follows-clicks"]["hstu"] is False
    assert "Incomplete" in plugin_tables.format_world(table)


def test_seeded_world_averages_seeds_and_compares_the_best_plugin_with_every_peer(tmp_path: Path) -> None:
    rates = {"sdm": 0.4, "xdm": 0.7, "sasrec": 0.4, "xdm-sasrec": 0.5, "gru4rec": 0.4, "xdm-gru4rec": 0.4,
             "hstu": 0.4, "xdm-hstu": 0.4, **{p: 0.35 for p in plugin_tables.PEERS}}
    world = _write_world(tmp_path, plugin_tables.DEFAULT_WORLD, rates, {"xdm": 0.6, "xdm-sasrec": 0.5})
    for seed in plugin_tables.SEEDS:
        for i, (row, rate) in enumerate(rates.items()):
            folder = world / seed / "peers" / row if row.startswith("rechub-") else world / seed / row
            _write_eval(folder, row, rate, seed=100 + i)
    table = plugin_tables.assemble_world(world, plugin_tables.UNKNOWN, n_boot=200)
    assert table["seeds"] == ["seed7", "seed8", "seed9"] and not table["missing"]
    assert len(table["summary"]["xdm"]["hr@50"]["seeds"]) == 3
    assert table["best_plugin"] == "xdm"  # validation HR@50, never the test days
    assert set(table["best_vs_peers"]) == set(plugin_tables.PEERS)
    assert plugin_tables.goals([table])["goal3"]["met"] is True


def test_main_writes_every_world_and_the_summary(tmp_path: Path) -> None:
    rates = {"sdm": 0.4, "xdm": 0.45}
    _write_world(tmp_path / "runs", "reference", rates, {})
    out = tmp_path / "out"
    assert plugin_tables.main(["--runs", str(tmp_path / "runs"), "--signal", str(tmp_path / "none.json"),
                               "--out", str(out), "--boot", "200"]) == 0
    assert (out / "reference" / "table.md").exists() and (out / "reference" / "lifts.png").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["worlds"] == ["reference"] and summary["goal1"]["intervals"] == 2


def test_a_table_says_which_rows_trained_their_dense_layers_with_adam(tmp_path: Path) -> None:
    rates = {"sdm": 0.4, "xdm": 0.5, "hstu": 0.5, "xdm-hstu": 0.5}
    world = _write_world(tmp_path, "reference", rates, {})
    for row in ("hstu", "xdm-hstu"):  # run.json as train_offline writes it now; the others as before the setting
        (world / row / "run.json").write_text(json.dumps({"dense_optimizer": "adam"}))
    table = plugin_tables.assemble_world(world, plugin_tables.SIGNAL, n_boot=200)
    assert table["adam_rows"] == ["hstu", "xdm-hstu"]
    assert "Dense layers: Adam on hstu, xdm-hstu, AdaGrad on the other rows." in plugin_tables.format_world(table)
    old = plugin_tables.assemble_world(_write_world(tmp_path / "old", "reference", rates, {}), plugin_tables.SIGNAL, 200)
    assert "Dense layers: AdaGrad on every row." in plugin_tables.format_world(old)
