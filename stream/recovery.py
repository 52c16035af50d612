"""How a worker gets its table back right: true changelog ends, and hooks around a rebalance.

1. True end offsets. Faust restores a table by reading its changelog from the offset the local store
   has up to the *highwater* it gets from the broker's end offsets (ListOffsets). The embedded broker
   (tansu) can answer with the first offset of the last record batch + 1 instead of the true high
   watermark (STACK.md: 9946 reported where 10399 was the last offset read). Faust then either raises
   ConsistencyError at start-up (the local store already holds an offset past the reported end) or
   ends the recovery early and silently misses the last records of a rebuild. The consumer thread
   below answers Faust's highwater lookups with `stream.true_ends.probe_true_ends` instead, at the cost
   of one short-lived consumer and about one fetch wait per recovery.

2. Rebalance hooks. The worker holds records back to align the clicks and impressions topics in
   event time (stream.align). When partitions are revoked those records must be let go without being
   acknowledged (the next owner, or this worker after the rebalance, reads them again from the
   committed offset), and local caches must be dropped because the table may change under them.
   `RebalanceHooks.revoked` runs on the main loop before Faust's own revocation work (which waits for
   every record handed to an agent to be acknowledged), and when the app stops; `RebalanceHooks.seeked`
   runs after Faust has sought the stream partitions back to their committed offsets, when records
   flow again. Faust's getmany also seeks (and so runs it) when a fetch returns after the flow stopped,
   which can be before a rebalance's recovery has ended: `seeked` may come early, never late. Nothing
   is lost by that (seen in the scale tests): records that arrive meanwhile are sought back by 3.

3. Fetches that give back what Faust would drop. The consumer thread fetches for a copy of the active
   partitions and seeks back the records of a partition that stopped being active (or of every
   partition once the flow stopped) before Faust sees them (`ProbingConsumerThread._fetch_records`).

stream.consumer wires these into Faust's aiokafka transport (XdmFaustApp); `make_app` uses it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import aiokafka
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from stream.broker_loss import DataLoss, report
from stream.true_ends import PROBE_WAIT_MS, probe_true_ends

log = logging.getLogger(__name__)


class ProbingConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread, with highwaters (recovery's end offsets) probed as described above.

    It also applies `fetch_max_wait_ms` (the app's `xdm_fetch_max_wait_ms`): Faust hard-codes 1500 ms,
    and the embedded broker answers a fetch only when that wait is over even if records arrived
    meanwhile (measured: 615 ms median from produce to consume at 1500, 17 ms at 100), which alone
    would spend the read path's whole freshness budget.
    """

    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        wait_ms = getattr(self.app, "xdm_fetch_max_wait_ms", None)
        if wait_ms:
            consumer._fetch_max_wait_ms = wait_ms  # read when the consumer starts its fetcher
        return consumer

    async def _fetch_records(self, consumer: aiokafka.AIOKafkaConsumer, active_partitions: set[TP] | None,
                             timeout: float | None = None, max_records: int | None = None) -> Any:
        """Faust's fetch, for the partitions active when it starts; records Faust would drop are given back.

        Faust passes its live set of active partitions, which the main thread changes while the fetch
        waits (rebalances, recovery pausing and resuming changelog partitions), and aiokafka reads an
        empty set as "every partition". Handing records out moves aiokafka's position on, and Faust drops
        those of a partition that is not active when they arrive, or all of them once the flow has
        stopped. A stream partition is sought back to its committed offset after a rebalance, but nothing
        seeks a changelog partition back within a generation: a standby replica skipped those records,
        recorded a later offset, and the worker that then took the partition over recovered without them.
        """
        if active_partitions is None:  # a client-only app: every partition, as Faust does
            return await super()._fetch_records(consumer, active_partitions, timeout=timeout,
                                                max_records=max_records)
        wanted = set(active_partitions)
        if not wanted:
            return {}
        records = await super()._fetch_records(consumer, wanted, timeout=timeout, max_records=max_records)
        flowing, buffered = self.consumer.flow_active, self.consumer._buffered_partitions
        for tp in [tp for tp in records if not flowing or (tp not in active_partitions and tp not in buffered)]:
            consumer.seek(tp, records.pop(tp)[0].offset)  # back to before this fetch handed them out
        return records

    async def _highwaters(self, partitions: list[TP]) -> Mapping[TP, int]:
        reported = await super()._highwaters(partitions)
        if self.consumer.in_transaction:  # last stable offsets come from the fetch state, not ListOffsets
            return reported
        probe = self._probe_consumer()
        await probe.start()
        try:
            ends = await probe_true_ends(probe, reported)
        finally:
            await probe.stop()
        raised = {tp: (reported[tp], end) for tp, end in ends.items() if end != reported[tp]}
        if raised:
            log.info("changelog end offsets raised to the true end: %s", raised)
        report_lost_changelogs(self.app, ends)
        return ends  # type: ignore[return-value]

    def _probe_consumer(self) -> aiokafka.AIOKafkaConsumer:
        conf = self.app.conf
        transport = self.transport
        return aiokafka.AIOKafkaConsumer(
            bootstrap_servers=faust_aiokafka.server_list(transport.url, transport.default_port),
            client_id=f"{conf.broker_client_id}-end-probe",
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=PROBE_WAIT_MS,
            request_timeout_ms=int(conf.broker_request_timeout * 1000),
            **faust_aiokafka.credentials_to_aiokafka_auth(conf.broker_credentials, conf.ssl_context),
        )


def report_lost_changelogs(app: Any, ends: Mapping[Any, int | None]) -> None:
    """Report each changelog partition whose true end lies at or below the offset a local table store
    already holds (stream/broker_loss.py): the broker lost records this worker wrote or restored.

    Faust's own check raises ConsistencyError for most of these and stops the worker with a message about
    removed data; it skips a log of one record (highwater 0) and cannot see a log written again past the
    stored offset, and then the worker carries on with windows the changelog no longer backs.
    """
    tables = {table.changelog_topic.get_topic_name(): table for table in app.tables.values()}
    for tp, end in ends.items():
        table = tables.get(tp.topic)
        stored = table.persisted_offset(tp) if table is not None else None
        if stored is None or (end is not None and stored < end):
            continue
        report(DataLoss("stream worker", tp.topic, tp.partition, stored + 1,
                        "is gone" if end is None else f"ends at offset {end}",
                        "the worker's local windows are no longer backed by the changelog: stop the workers, "
                        "wipe stream.data_dir and replay the events to rebuild them"))


@dataclass
class RebalanceHooks:
    """Callbacks run on the app's event loop around a rebalance (see the module doc)."""

    on_revoked: list[Callable[[], None]] = field(default_factory=list)
    on_seeked: list[Callable[[], None]] = field(default_factory=list)

    def revoked(self) -> None:
        for callback in self.on_revoked:
            callback()

    def seeked(self) -> None:
        for callback in self.on_seeked:
            callback()


def hooks_of(app: Any) -> RebalanceHooks:
    """The app's hooks (an app built without them gets an empty set)."""
    return getattr(app, "rebalance_hooks", None) or RebalanceHooks()
