"""Training samples: the windows at a click and the next clicks after it as labels (§3.1, §4.3).

A click anchors a sample when a stable hash of its event id falls in 1 of `every_m_clicks` buckets,
so the choice does not depend on arrival order. The anchor waits in `UserState.pending` (persisted
with the rest of the state) until its labels are final: the next `n_labels` clicks after it exist and
the watermark has passed the last of them, so no click still allowed in by the lateness can land
among them. The windows are then taken at the anchor time, which makes a sample the same whatever
order its events arrived in. An anchor whose labels are not all within `expire_ms` of it is dropped
once the watermark passes that span.
"""

from __future__ import annotations

import hashlib
import math
import zlib
from bisect import bisect_left, insort
from dataclasses import dataclass, replace

from stream.windows import (
    Behavior,
    Outcome,
    UserState,
    Windows,
    apply_event,
    behaviors,
    snapshot,
)
from xdm.records import Event, Item
from xdm.stream_rules import SampleRules, WindowRules


@dataclass(frozen=True, slots=True)
class Sample:
    sample_id: str  # stable: derived from the user and the anchor click's event id
    user_id: str
    ts_ms: int  # anchor time t
    windows: Windows  # snapshot at t, the anchor click ending the short-term session
    labels: tuple[Behavior, ...]  # the next n_labels clicks after t, in time order (C_{u,t})
    profile: tuple[tuple[str, str], ...] = ()  # sorted (name, value) user features for e_u, joined by the caller

    def with_profile(self, fields: tuple[tuple[str, str], ...]) -> Sample:
        return replace(self, profile=tuple(sorted(fields)))


@dataclass(frozen=True, slots=True)
class StepResult:
    outcome: Outcome
    samples: list[Sample]  # samples this event completed, oldest anchor first


def is_anchor(event_id: str, rules: SampleRules) -> bool:
    """Whether a click anchors a sample; a pure function of its id, so arrival order cannot matter."""
    m = rules.every_m_clicks
    return m == 1 or zlib.crc32(event_id.encode("utf-8", "surrogatepass")) % m == 0


def sample_id(user_id: str, event_id: str) -> str:
    key = f"{len(user_id)}:{user_id}{event_id}".encode("utf-8", "surrogatepass")
    return hashlib.blake2b(key, digest_size=8).hexdigest()


def step(state: UserState, event: Event, item: Item, wrules: WindowRules, srules: SampleRules) -> StepResult:
    """Apply one event and return the samples it completed."""
    outcome = apply_event(state, event, item, wrules)
    if outcome is not Outcome.APPLIED:
        return StepResult(outcome, [])
    if event.kind == "click" and is_anchor(event.event_id, srules):
        insort(state.pending, (event.ts_ms, event.event_id))
    if not state.pending:
        return StepResult(outcome, [])
    return StepResult(outcome, _settle(state, state.max_ts - wrules.lateness_ms, wrules, srules))


def flush(state: UserState, wrules: WindowRules, srules: SampleRules) -> list[Sample]:
    """At the end of the input: finalise every complete sample and drop the rest."""
    return _settle(state, math.inf, wrules, srules)


def _settle(state: UserState, mark: float, wrules: WindowRules, srules: SampleRules) -> list[Sample]:
    """Finalise or drop the pending anchors whose fate is known at watermark `mark`.

    Anchors are sorted by time, and a later anchor's last label and deadline are no earlier than an
    earlier one's; so once an anchor must keep waiting, every later one must too, and the scan stops
    there. This runs after every event of a user with pending anchors, so it must be cheap.
    """
    done: list[Sample] = []
    clicks = state.clicks
    n = srules.n_labels
    pending = state.pending
    settled = 0
    for ts, event_id in pending:
        first = bisect_left(clicks, (ts + 1,))
        last = first + n - 1
        deadline = ts + srules.expire_ms
        if last < len(clicks) and clicks[last][0] < mark and clicks[last][0] <= deadline:
            labels = behaviors(clicks[first:last + 1])
            done.append(Sample(sample_id(state.user_id, event_id), state.user_id, ts,
                               snapshot(state, ts, wrules), labels))
        elif mark <= deadline:
            break
        # else: every click up to the deadline is known and fewer than n_labels fell in it: expired.
        settled += 1
    del pending[:settled]
    return done
