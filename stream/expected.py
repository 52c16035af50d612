"""What an uninterrupted stream ends with: the pure rules applied to a log in time order.

Fault tests and benches (tests/integration/test_stream_faults.py, bench/chaos.py) check workers that
were killed, stopped and rebalanced against this: no event lost or applied twice means the same
windows, and every sample the rules complete emitted. Users are compared by their snapshot at their
newest event, their newest event time and their pending sample anchors; the raw rows may differ where
pruning ran at another moment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

from stream.samples import step
from stream.windows import Outcome, UserState, snapshot
from xdm.records import Event, Item
from xdm.stream_rules import SampleRules, WindowRules


@dataclass
class ExpectedRun:
    states: dict[str, UserState]  # user id -> state after the last event
    sample_ids: set[str]  # every sample the events complete (the end of input flushes nothing)
    applied: int  # events applied (not duplicates, not too late)


def expected_run(events: Iterable[Event], items: Mapping[str, Item], windows: WindowRules,
                 samples: SampleRules) -> ExpectedRun:
    """Apply `events` in the given order; an item missing from the catalogue joins with no side info, as
    a worker joins it."""
    run = ExpectedRun(states={}, sample_ids=set(), applied=0)
    for event in events:
        state = run.states.setdefault(event.user_id, UserState())
        result = step(state, event, items.get(event.item_id) or Item(event.item_id), windows, samples)
        run.applied += result.outcome is Outcome.APPLIED
        run.sample_ids.update(s.sample_id for s in result.samples)
    return run


def same_windows(want: UserState, got: UserState | None, rules: WindowRules) -> bool:
    return (got is not None and got.max_ts == want.max_ts and got.pending == want.pending
            and snapshot(got, want.max_ts, rules) == snapshot(want, want.max_ts, rules))


def differing_users(want: Mapping[str, UserState], got: Mapping[str, UserState], rules: WindowRules) -> list[str]:
    """Users whose windows differ from the expected ones, then users nobody expected."""
    bad = [user for user, w in want.items() if not same_windows(w, got.get(user), rules)]
    return bad + sorted(set(got) - set(want))


def describe_difference(want: UserState | None, got: UserState | None, rules: WindowRules) -> str:
    """What a reader needs to tell a lost event from a late one: newest times and window contents."""
    if want is None or got is None:
        return f"state present: expected {want is not None}, found {got is not None}"
    at = max(want.max_ts, got.max_ts)
    w, g = snapshot(want, at, rules), snapshot(got, at, rules)
    parts = [f"max_ts expected {want.max_ts} found {got.max_ts}", f"pending {len(want.pending)}/{len(got.pending)}"]
    for kind in ("short", "long", "unclicked"):
        a, b = getattr(w, kind), getattr(g, kind)
        missing = sorted({x.item.item_id for x in a} - {x.item.item_id for x in b})[:5]
        extra = sorted({x.item.item_id for x in b} - {x.item.item_id for x in a})[:5]
        parts.append(f"{kind} {len(a)}/{len(b)} missing {missing} extra {extra}")
    return "; ".join(parts)
