"""bench/chaos.py's bookkeeping: every fault comes up in a short run, failed calls land on their fault."""

from __future__ import annotations

import random

from bench.chaos_faults import KINDS, MODES, Fault, FaultPlan
from bench.chaos_report import attribute
from bench.chaos_traffic import Call


def test_the_plan_goes_through_every_fault_before_repeating_one():
    plan = FaultPlan(random.Random(3), KINDS, MODES)
    pairs = len(KINDS) * len(MODES)
    first, second = [plan.next() for _ in range(pairs)], [plan.next() for _ in range(pairs)]
    assert set(first) == set(second) == {(k, m) for k in KINDS for m in MODES}
    assert first != second  # each round in a new order


def test_a_failed_call_counts_on_the_fault_whose_outage_it_overlaps():
    faults = [Fault("server", "kill", "server", injected_at=10.0, held_s=1.0, recovered_at=20.0),
              Fault("milvus", "stop", "milvus", injected_at=30.0, held_s=2.0)]  # never recovered
    calls = [Call(9.0, "u", 1.5, "UNAVAILABLE", False, 0),  # started before, ended inside the outage
             Call(15.0, "u", 0.1, "OK", True, 3),  # a fallback answer during it
             Call(21.0, "u", 0.1, "DEADLINE_EXCEEDED", False, 0),  # after recovery, before the next fault
             Call(25.0, "u", 0.1, "OK", False, 3),
             Call(40.0, "u", 2.0, "DEADLINE_EXCEEDED", False, 0)]  # the unrecovered fault's outage goes on
    assert attribute(faults, calls) == 1
    assert (faults[0].failed_calls, faults[0].degraded_calls) == (1, 1)
    assert (faults[1].failed_calls, faults[1].degraded_calls) == (1, 0)
