"""Which samples the learner has already taken, so a sample the stream emits twice is trained on once.

A worker that dies between emitting samples and committing its input offsets emits them again after the
restart (at-least-once delivery), with the same `sample_id` (derived from the user and the anchor
click's event id, stream/samples.py). The learner remembers the newest `capacity` ids, in arrival order,
and skips an id it holds. Re-emissions follow the crash within the worker's uncommitted span (seconds to
minutes of samples), far fewer than the capacity, so a bounded memory catches them. The ids are part of
the learner's checkpoint: a learner restart keeps catching re-emissions of samples it trained before.
"""

from __future__ import annotations

from collections import OrderedDict


class SeenSamples:
    """The newest `capacity` sample ids; 0 turns the check off."""

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._ids)

    def first_time(self, sample_id: str) -> bool:
        """Remember `sample_id`; False if it was already held (a repeat to skip)."""
        if self.capacity == 0:
            return True
        if sample_id in self._ids:
            return False
        self._ids[sample_id] = None
        if len(self._ids) > self.capacity:
            self._ids.popitem(last=False)
        return True

    def state_dict(self) -> list[str]:
        return list(self._ids)

    def load_state_dict(self, ids: list[str]) -> None:
        self._ids = OrderedDict.fromkeys(ids[-self.capacity:] if self.capacity else [])
