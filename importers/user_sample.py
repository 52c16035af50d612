"""A deterministic sample of users (`--max-users N`): the same N users on every run and every machine.

Users are ranked by a fixed hash of their id (blake2b, not Python's per-process salted `hash`) and the N
lowest kept: the sample does not depend on file order, is uniform over users, and a larger N keeps every user
of a smaller one, so samples of growing size nest.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterable


def user_rank(user_id: str) -> tuple[bytes, str]:
    # the id itself breaks (improbable) hash ties, so the choice never depends on set iteration order
    return hashlib.blake2b(user_id.encode("utf-8"), digest_size=8).digest(), user_id


def sample_users(user_ids: Iterable[str], limit: int) -> frozenset[str]:
    """The `limit` users of `user_ids` (duplicates allowed) with the lowest rank; all when there are fewer."""
    if limit < 1:
        raise ValueError(f"the user sample needs at least 1 user, got {limit}")
    return frozenset(heapq.nsmallest(limit, set(user_ids), key=user_rank))
