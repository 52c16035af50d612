"""Dead letters for the records of the mirror topics (items, users) that a worker cannot use.

Every stream worker reads the whole catalogue and profile topics into its own mirror (stream/mirror.py),
so every worker meets every bad record on them; if each wrote a letter, N workers would write N copies.
One worker writes them: the one holding partition 0 of the clicks topic, a choice each worker makes
alone from its own assignment. The others count the record (xdm_bad_records_total{reader}) and leave
the letter to that worker.

The choice is made against a settled assignment: a record read before the worker's first assignment
(workers read the mirrors while they join the group) or during a rebalance waits for the next one, at
most ASSIGNMENT_WAIT_S; after that the letter is written anyway, since a copy too many beats a letter
lost. A letter can still come twice (partition 0 moved in a rebalance between two workers' reads of
the record; an owner restarted reads the topics from the beginning again) or, rarer, not at all (the
record read by the old owner just before such a move and by the new one just after). Letters of
mirror topics are keyed "topic/partition/offset", so a reader of the dead-letter topic can drop repeats.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust
from faust.types import TP

from stream.consumer import XdmFaustApp
from stream.dlq import DeadLetterSink

log = logging.getLogger(__name__)
ASSIGNMENT_WAIT_S = 60.0  # longest a letter waits for the worker to know its partitions


class MirrorDeadLetters:
    """`reject(record, reason)` for the worker's TopicMirrors: a letter, if this worker is the writer."""

    def __init__(self, app: XdmFaustApp, sink: DeadLetterSink, writer_partition: TP) -> None:
        self.app = app
        self.sink = sink
        self.writer_partition = writer_partition
        self._settled = asyncio.Event()  # set while the worker's assignment is known and not being revoked
        app.rebalance_hooks.on_revoked.append(self._settled.clear)
        # sent after every rebalance, an empty assignment too (the rebalance hooks' seek is not)
        app.on_rebalance_complete.connect(self._on_rebalance_complete)

    async def reject(self, record: Any, reason: str) -> None:
        """A record of a mirror topic that was skipped as bad (an aiokafka ConsumerRecord)."""
        if not await self._writes_letters():
            return  # counted by the mirror; the writer sends the letter
        key = f"{record.topic}/{record.partition}/{record.offset}".encode()
        await self.sink.send_letter(record.topic, record.partition, record.offset, key, record.value, reason)

    async def _writes_letters(self) -> bool:
        try:
            await asyncio.wait_for(self._settled.wait(), ASSIGNMENT_WAIT_S)
        except TimeoutError:
            log.warning("no partition assignment after %.0f s: writing the dead letter anyway", ASSIGNMENT_WAIT_S)
            return True
        return self.writer_partition in self.app.consumer.assignment()

    def _on_rebalance_complete(self, sender: faust.App, **kwargs: Any) -> None:
        self._settled.set()
