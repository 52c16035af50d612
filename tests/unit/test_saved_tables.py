"""The committed Table 2 reports render again, from their JSON, to the tables the README and docs quote:
a change to row names or formats must not rewrite a saved result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from learner.ablation import format_table

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"


@pytest.mark.parametrize("run", ["ablate_default", "ablate_48k_cut"])
def test_a_saved_ablation_renders_to_its_committed_table(run: str):
    folder = RESULTS / run
    report = json.loads((folder / "ablation.json").read_text())
    assert format_table(report).strip() == (folder / "ablation.md").read_text().strip()
