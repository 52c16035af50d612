"""The chaos run (bench/chaos.py), short: every fault once, then nothing lost, doubled or repeated.

The whole embedded stack is fed a simulated log at a steady rate with Recall callers running, while each
of SIGKILL and SIGSTOP hits a stream worker, the learner, the Recall server, its compute child and Milvus
once, in a seeded order, each restarted or resumed. Then the windows must equal the pure rules over the
events fed, every sample those rules complete must be emitted and trained on exactly once, and versions
must strictly increase with each kept tower matching its Milvus vectors; every fault must recover.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from bench.chaos import ChaosSettings, run_chaos
from bench.chaos_faults import KINDS, MODES
from bench.chaos_report import print_report, write

# Short gaps and holds: the gap between a recovery and the next fault is idle time, and a stop held 1-1.5 s
# already parks the process mid-traffic (calls fail or wait on it); the run's length is then mostly the
# system's own recoveries (restarts, rebalances, the next publish).
SHORT = replace(ChaosSettings(), duration_s=150.0, max_faults=len(KINDS) * len(MODES), seed=1, rate=200.0,
                callers=3, gap_s=(0.2, 0.5), hold_s=(1.0, 1.5), restart_delay_s=(0.0, 0.5),
                recover_timeout_s=90.0, settle_timeout_s=120.0, users=1000, days=1)


@pytest.mark.timeout(600)
def test_every_fault_once_loses_doubles_and_repeats_nothing(tmp_path: Path):
    report = run_chaos(SHORT, tmp_path / "chaos", progress=lambda line: print(line, flush=True))
    write(report, tmp_path / "report")
    print_report(report)  # shown by pytest when the test fails

    injected = {(f["kind"], f["mode"]) for f in report["faults"]}
    assert not [f for f in report["faults"] if f["recovered_at"] is None], report["violations"]
    assert injected == {(k, m) for k in KINDS for m in MODES}, f"faults injected: {sorted(injected)}"
    windows, samples, versions = (report["invariants"][k] for k in ("windows", "samples", "versions"))
    assert windows["ok"], f"windows differ from the rules: {windows}"
    assert samples["lost"] == samples["unexpected"] == 0, f"samples emitted != the rules' samples: {samples}"
    assert samples["trained_twice"] == samples["never_trained"] == samples["trained_not_emitted"] == 0, (
        f"samples not trained exactly once: {samples}")
    assert not versions["repeated"] and not versions["not_increasing"], f"versions repeated: {versions}"
    assert versions["latest_is_last_announced"] and not versions["mismatched"], f"towers vs vectors: {versions}"
    assert report["ok"], report["violations"]
