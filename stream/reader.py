"""The read path serving uses: a replica of the windows table built from its changelog topic.

Workers and servers may run on different machines, so the server never opens the workers' RocksDB files;
it mirrors the `windows` table's changelog (every table write is also a changelog record) and decodes a
user's state only when that user is asked for. A read is a dict lookup plus a decode and a snapshot.
"""

from __future__ import annotations

import time

from stream.mirror import TopicMirror
from stream.state_codec import decode_state
from stream.topics import changelog_topic
from stream.windows import NO_EVENTS, WindowRules, Windows, snapshot
from xdm.config import Config


class WindowsReader:
    """Current windows of any user, as the workers last wrote them."""

    def __init__(self, cfg: Config) -> None:
        self.rules: WindowRules = cfg.windows
        self.mirror: TopicMirror[bytes] = TopicMirror(cfg.kafka.bootstrap, changelog_topic(cfg), bytes, name="windows")

    async def start(self, wait_s: float = 60.0) -> None:
        await self.mirror.start()
        await self.mirror.wait_caught_up(wait_s)

    async def stop(self) -> None:
        await self.mirror.stop()

    def windows(self, user_id: str) -> Windows | None:
        """The user's windows at their latest event time (event time, so replays of old logs work)."""
        raw = self.mirror.get(user_id)
        if raw is None:
            return None
        state = decode_state(raw)
        if state.max_ts == NO_EVENTS:
            return None
        return snapshot(state, state.max_ts, self.rules)

    def staleness_ms(self, user_id: str) -> float | None:
        """Wall-clock age of the newest changelog record of this user (broker timestamp)."""
        ts = self.mirror.last_update_ms.get(user_id)
        return None if ts is None else time.time() * 1000 - ts
