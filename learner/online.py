"""`xdm learn`: train one arm incrementally on the samples topic, checkpoint, and publish versions.

The learner assigns itself every partition of the samples topic under its arm's group id and starts from
the offsets stored in its last checkpoint (else the beginning). Offsets are committed only for samples a
checkpoint covers, and a checkpoint is only taken between batches, so after a crash the learner replays
exactly the samples its checkpoint does not cover: with the same samples it ends with the same
parameters as a run that never stopped (CPU, same seed; one samples partition makes batch boundaries
independent of poll timing when batches fill up). After each step on new samples it takes
`learner.rehearsal_steps` more on random batches of the last `learner.rehearsal_window` samples
(learner/rehearsal.py: why, and how a restart draws the same batches).

Versions are published beside training (learner/background_publish.py): the loop snapshots the model
between batches and goes on training while a thread publishes it, so a slow or stopped Milvus delays
versions, never steps. Version numbers only grow, across restarts too: a resumed learner numbers above
its checkpoint and above every version the stores hold (learner/publish.py: next_version).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata
from prometheus_client import start_http_server

from learner import instruments as m
from learner.background_publish import BackgroundPublisher, Outcome, PublishSchedule
from learner.checkpoint import load_checkpoint, save_checkpoint
from learner.dedup import SeenSamples
from learner.model import config_for
from learner.progressive import validation_sampling
from learner.publish import Publisher
from learner.rehearsal import Ref, Rehearsal, read_back
from learner.trained_ids import TrainedIds, trained_ids_path
from learner.trainer import StepStats, Trainer
from stream.broker_loss import ReadPositions, check_kafka_python
from stream.partitions import find_partitions_blocking
from stream.samples import Sample
from stream.wire import MalformedEvent, SampleTimes, decode_sample
from xdm.client_security import kafka_client_kwargs
from xdm.config import Config, KafkaConfig
from xdm.model_config import model_overrides
from xdm.v1 import events_pb2

log = logging.getLogger(__name__)
MAX_WINDOW = 1000  # a window longer than this is not one the stream can produce: reject the sample
RUNNING_STEPS = 50  # progressive-validation figures are means over this many recent steps
POLL_MS = 200  # longest wait for samples in one poll: the loop checks stop, idle and batch age this often


class Taken(NamedTuple):
    """A sample taken for training, with its timings and where it lies in the samples topic."""

    sample: Sample
    times: SampleTimes
    ref: Ref


@dataclass
class LearnerStatus:
    steps: int = 0
    samples: int = 0
    versions: list[int] = field(default_factory=list)
    dead_letters: int = 0
    duplicates: int = 0  # samples skipped as repeats of one already taken (learner/dedup.py)
    skipped_steps: int = 0
    rehearsal_steps: int = 0  # steps on remembered samples (learner/rehearsal.py), included in steps
    evicted_items: int = 0
    hr50: float = 0.0  # running mean over RUNNING_STEPS
    mrr50: float = 0.0


def validate_sample(sample: Sample) -> None:
    """Reject what the stream cannot produce; the learner must not train on it."""
    if not sample.labels:
        raise MalformedEvent("sample without labels")
    w = sample.windows
    for name, window in (("short", w.short), ("long", w.long), ("unclicked", w.unclicked), ("labels", sample.labels)):
        if len(window) > MAX_WINDOW:
            raise MalformedEvent(f"{name} window of {len(window)} behaviours exceeds {MAX_WINDOW}")
        if any(not b.item.item_id for b in window):
            raise MalformedEvent(f"{name} window holds a behaviour without item id")


class OnlineLearner:
    """One learner process. A rank of a data-parallel group (learner/distributed.py) runs the same loop
    through the hooks below it: its share of the partitions, and every decision agreed by the group."""

    def __init__(self, cfg: Config, arm: str | None = None, variant: str | None = None) -> None:
        self.cfg = cfg
        self.arm = arm or cfg.learner.arm
        self.variant = variant or cfg.learner.variant
        lc = cfg.learner
        self.trainer = Trainer(config_for(self.variant, **model_overrides(cfg.model)), lr=lc.lr, clip_norm=lc.clip_norm,
                               seed=lc.seed, device=lc.device, threads=lc.torch_threads,
                               adagrad_init=lc.adagrad_init, lr_warmup_steps=lc.lr_warmup_steps,
                               validation=validation_sampling(lc), sparse_item_update=lc.sparse_item_update,
                               dense_optimizer=lc.dense_optimizer, adam_lr=lc.adam_lr)
        self.publisher = Publisher(cfg, self.arm, self.variant)
        self.publishing = BackgroundPublisher(self.publisher, lc.publish_deadline_s)
        self.schedule = PublishSchedule(lc.publish_every_steps, lc.publish_every_s)
        self.status = LearnerStatus()
        self.version = 0  # the newest version this learner announced (or its checkpoint recorded)
        self.covered: dict[int, int] = {}  # partition -> next offset covered by trained samples
        # a broker that lost samples this learner had read is reported (stream/broker_loss.py)
        self.read_positions = ReadPositions(f"learner-{self.arm}", "samples not trained yet are lost; training "
                                            "goes on from the start of the new log")
        self.seen = SeenSamples(lc.dedup_samples)
        self.trained_ids: TrainedIds | None = None  # set by run_learner when learner.record_trained_ids
        self.rehearsal = Rehearsal(lc.rehearsal_steps, lc.rehearsal_window, lc.seed)
        self._recent: deque[tuple[float, float]] = deque(maxlen=RUNNING_STEPS)
        self._unpublished_since: float | None = None  # wall time of the oldest step in no snapshot being published
        self._publishing_since: float | None = None  # ... that the snapshot being published includes
        self._stop = threading.Event()
        self._producer: KafkaProducer | None = None

    def stop(self) -> None:
        self._stop.set()

    def restore(self, warm_start: str | None = None) -> None:
        """Resume from this arm's checkpoint; else warm-start weights from an offline run."""
        state = load_checkpoint(self.cfg.learner.checkpoint_dir, self.arm)
        if self.trained_ids is not None:  # what came after the checkpoint will be trained on again
            self.trained_ids.cut_to(state.get("trained_ids_bytes", 0) if state else 0)
        if state is not None:
            self._resume(state, state.get("seen", []), state.get("rehearsal"))
            log.info("resumed from checkpoint", extra={"arm": self.arm, "steps": self.trainer.steps,
                                                        "version": self.version})
            return
        if warm_start:
            offline = load_checkpoint(warm_start, "offline")
            if offline is None:
                raise FileNotFoundError(f"no offline checkpoint under {warm_start}/offline; run `xdm train` first")
            self.trainer.load_state_dict(offline["trainer"])
            log.info("warm start", extra={"arm": self.arm, "run": warm_start, "steps": self.trainer.steps})

    def run(self, max_steps: int | None = None, idle_exit_s: float | None = None) -> LearnerStatus:
        consumer = self._consumer()
        self.schedule.restart(self.trainer.steps)
        try:
            self._loop(consumer, max_steps, idle_exit_s)
        finally:
            consumer.close(autocommit=False)
            self._published(self.publishing.wait())  # a publish in flight gets its deadline to finish
            self.publisher.close()
            if self._producer:
                self._producer.close(timeout=5)
        return self.status

    def _resume(self, state: dict, seen_ids: list[str], rehearsal: dict | None) -> None:
        """Take trainer, covered offsets, version, the sample ids already taken and the rehearsal memory
        (read back from the samples topic) from a checkpoint."""
        self.trainer.load_state_dict(state["trainer"])
        self.covered = {int(p): int(o) for p, o in state["offsets"].items()}
        self.version = state["version"]
        self.seen.load_state_dict(seen_ids)
        if rehearsal and self.rehearsal.steps:
            k = self.cfg.kafka
            samples = read_back(lambda: reader_consumer(k), k.samples_topic, rehearsal["refs"])
            self.rehearsal.load_state_dict(rehearsal, samples)

    # --- the loop

    def _consumer(self) -> KafkaConsumer:
        k = self.cfg.kafka
        consumer = samples_consumer(k, self.arm)
        partitions = self._share(find_partitions_blocking(consumer, k.samples_topic))
        assign_from(consumer, partitions, self.covered)
        for partition, offset in self.covered.items():
            self.read_positions.start_at(k.samples_topic, partition, offset)
        return consumer

    def _loop(self, consumer: KafkaConsumer, max_steps: int | None, idle_exit_s: float | None) -> None:
        lc = self.cfg.learner
        buffer: list[Taken] = []
        pending: dict[int, int] = {}  # partition -> offset after the last record taken from it
        batch_started = last_data = time.monotonic()
        at_checkpoint = at_evict = self.trainer.steps
        while True:
            stop = self._stop.is_set() or (max_steps is not None and self.trainer.steps >= max_steps)
            polled = {} if stop else self._poll(consumer, lc.batch_size - len(buffer))
            for tp, records in sorted(polled.items(), key=lambda kv: kv[0].partition):
                for record in records:
                    self.read_positions.read(tp.topic, tp.partition, record.offset)
                    pending[tp.partition] = record.offset + 1
                    decoded = self._decode(record)
                    if decoded is not None:
                        buffer.append(decoded)
            check_kafka_python(self.read_positions, consumer, self.cfg.kafka)
            now = time.monotonic()
            if polled:
                last_data = now
            if not buffer:
                batch_started = now
            ready = bool(buffer) and (len(buffer) >= lc.batch_size or (now - batch_started) * 1000 >= lc.max_wait_ms)
            busy = bool(buffer) or idle_exit_s is None or now - last_data <= idle_exit_s
            ready, stop, busy = self._agree(ready, stop, busy)
            if stop or not busy:
                break
            if ready:
                self._train(buffer)
                buffer = []
                batch_started = now
            if buffer:
                continue  # offsets, checkpoints and publishes only between batches
            self.covered.update(pending)  # dead letters included: they are handled for good
            # Only after a step: steps are what these count, and in a group every rank steps at once, so every
            # rank takes the collective checkpoint at the same iteration (and its identical vocabulary evicts
            # identical rows).
            if ready and self.trainer.steps - at_evict >= lc.evict_every_steps:
                self._evict()
                at_evict = self.trainer.steps
            if ready and self.trainer.steps - at_checkpoint >= lc.checkpoint_every_steps:
                self._checkpoint(consumer)
                at_checkpoint = self.trainer.steps
            self._publish_point()
        if not buffer:
            self.covered.update(pending)
        # Samples taken but not trained are in `seen` already: a checkpoint now would skip them after a restart.
        holding, due = self._agree(bool(buffer), self.trainer.steps > at_checkpoint or bool(pending))
        if due and not holding:
            self._checkpoint(consumer)

    # --- what a rank of a data-parallel group does differently (learner/distributed.py)

    def _share(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        """The samples partitions this learner reads: all of them."""
        return partitions

    def _poll(self, consumer: KafkaConsumer, room: int) -> dict:
        return consumer.poll(timeout_ms=POLL_MS, max_records=room)

    def _agree(self, *flags: bool) -> list[bool]:
        """Each decision flag as the whole learner takes it: alone, as this process sees it."""
        return list(flags)

    def _decode(self, record) -> Taken | None:
        try:
            sample, times = decode_sample(record.value)
            validate_sample(sample)
        except MalformedEvent as exc:
            self._dead_letter(record, str(exc))
            return None
        if not self.seen.first_time(sample.sample_id):
            self.status.duplicates += 1
            m.DUPLICATES.labels(self.arm).inc()
            return None
        return Taken(sample, times, (record.partition, record.offset))

    def _train(self, buffer: list[Taken]) -> None:
        """One step on the new samples, then the rehearsal steps (every rank of a group takes as many)."""
        stats = self.trainer.step([t.sample for t in buffer])
        if self.trained_ids is not None:
            self.trained_ids.append(t.sample.sample_id for t in buffer)
        self._account(buffer, stats)
        self.rehearsal.remember((t.ref, t.sample) for t in buffer)
        for batch in self.rehearsal.batches(self.cfg.learner.batch_size):
            again = self.trainer.step(batch, rehearsal=True)
            self.status.rehearsal_steps += 1
            m.STEPS.labels(self.arm).inc(0 if again.skipped else 1)
            m.SKIPPED.labels(self.arm).inc(1 if again.skipped else 0)
        st = self.status
        st.steps, st.skipped_steps = self.trainer.steps, self.trainer.skipped_steps

    def _account(self, buffer: list[Taken], stats: StepStats) -> None:
        now_s = time.time()
        for _, times, _ in buffer:
            if times.source_ms and times.emitted_ms:
                m.EVENT_TO_SAMPLE.labels(self.arm).observe(max(0.0, (times.emitted_ms - times.source_ms) / 1000))
            if times.emitted_ms:
                m.SAMPLE_TO_TRAINED.labels(self.arm).observe(max(0.0, now_s - times.emitted_ms / 1000))
        if self._unpublished_since is None:
            self._unpublished_since = now_s
        self._recent.append((stats.hr50, stats.mrr50))
        st = self.status
        st.steps, st.samples, st.skipped_steps = self.trainer.steps, self.trainer.samples_seen, self.trainer.skipped_steps
        st.hr50 = sum(h for h, _ in self._recent) / len(self._recent)
        st.mrr50 = sum(r for _, r in self._recent) / len(self._recent)
        m.STEPS.labels(self.arm).inc(0 if stats.skipped else 1)
        m.SKIPPED.labels(self.arm).inc(1 if stats.skipped else 0)
        m.SAMPLES.labels(self.arm).inc(stats.samples)
        m.HR50.labels(self.arm).set(st.hr50)
        m.MRR50.labels(self.arm).set(st.mrr50)
        if not stats.skipped:
            m.LOSS.labels(self.arm).set(stats.loss)
        log.info("step", extra={"arm": self.arm, "step": st.steps, "loss": round(stats.loss, 4),
                                "hr50_running": round(st.hr50, 4), "mrr50_running": round(st.mrr50, 4),
                                "samples": stats.samples, "skipped": stats.skipped})

    def _evict(self) -> None:
        after = self.cfg.learner.evict_after_ms
        newest = self.trainer.vocab.newest_item_time()
        if after <= 0 or newest <= 0:
            return
        evicted = self.trainer.evict_items(newest - after)
        self.status.evicted_items += evicted
        m.ITEMS.labels(self.arm).set(len(self.trainer.vocab.live_items()))
        if evicted:
            log.info("evicted items", extra={"arm": self.arm, "evicted": evicted})

    def _checkpoint(self, consumer: KafkaConsumer) -> None:
        save_checkpoint(self.cfg.learner.checkpoint_dir, self.arm, {
            "trainer": self.trainer.state_dict(), "offsets": dict(self.covered), "version": self.version,
            "variant": self.variant, "model_config": asdict(self.trainer.model.cfg), "seen": self.seen.state_dict(),
            "rehearsal": self.rehearsal.state_dict(),
            "trained_ids_bytes": self.trained_ids.mark() if self.trained_ids is not None else 0,
        })
        topic = self.cfg.kafka.samples_topic
        try:
            consumer.commit({TopicPartition(topic, p): OffsetAndMetadata(o, "", -1) for p, o in self.covered.items()})
        except Exception:  # the checkpoint holds the offsets; the group commit only informs monitoring tools
            log.warning("offset commit failed; the checkpoint still holds the offsets", exc_info=True)

    def _publish_point(self) -> None:
        """Take the outcome of a publish that ended, then start the next one if due. Never waits."""
        self._published(self.publishing.poll())
        if not self.publishing.busy and self.schedule.due(self.trainer.steps):
            self._start_publish()

    def _publish(self) -> bool:
        """Publish now and wait for the outcome (within learner.publish_deadline_s); True when announced."""
        if not self.publishing.busy:
            self._start_publish()
        return self._published(self.publishing.wait())

    def _start_publish(self) -> None:
        self.publishing.start(self.trainer, after_version=self.version)
        self.schedule.attempted(self.trainer.steps)
        self._publishing_since, self._unpublished_since = self._unpublished_since, None

    def _published(self, outcome: Outcome | None) -> bool:
        """Account for an ended publish (failures were logged and counted by BackgroundPublisher)."""
        if outcome is None:
            return False
        since, self._publishing_since = self._publishing_since, None
        if outcome.info is None:
            self._unpublished_since = since or self._unpublished_since  # those steps are still unpublished
            return False
        self.version = outcome.info.version
        self.status.versions.append(self.version)
        self.schedule.published_steps = outcome.steps
        if since is not None:
            m.TRAINED_TO_PUBLISHED.labels(self.arm).observe(time.time() - since)
        m.VERSION.labels(self.arm).set(self.version)
        return True

    def _dead_letter(self, record, reason: str) -> None:
        self.status.dead_letters += 1
        m.DEAD_LETTERS.labels(self.arm).inc()
        if self._producer is None:
            self._producer = KafkaProducer(**kafka_client_kwargs(self.cfg.kafka, "kafka-python"), acks="all")
        letter = events_pb2.DeadLetter(source_topic=record.topic, partition=record.partition, offset=record.offset,
                                       reason=reason, payload=record.value or b"", at_ms=int(time.time() * 1000))
        self._producer.send(self.cfg.kafka.dlq_topic, key=record.key, value=letter.SerializeToString()).get(timeout=30)
        log.warning("sample sent to dead letters", extra={"offset": record.offset, "reason": reason})


def run_learner(cfg: Config, arm: str | None = None, variant: str | None = None, warm_start: str | None = None,
                max_steps: int | None = None, idle_exit_s: float | None = None) -> LearnerStatus:
    """Run until SIGTERM / Ctrl-C (or max_steps / idle_exit_s); checkpoints before exiting."""
    if cfg.learner.metrics_port:
        start_http_server(cfg.learner.metrics_port, addr="127.0.0.1")
    learner = OnlineLearner(cfg, arm, variant)
    if cfg.learner.record_trained_ids:
        learner.trained_ids = TrainedIds(trained_ids_path(cfg.learner.checkpoint_dir, learner.arm))
    learner.restore(warm_start)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: learner.stop())
    return learner.run(max_steps, idle_exit_s)


def samples_consumer(k: KafkaConfig, arm: str) -> KafkaConsumer:
    """The arm's consumer of the samples topic, unassigned: offsets come from the learner's checkpoint."""
    return KafkaConsumer(**kafka_client_kwargs(k, "kafka-python"), group_id=f"xdm-learner-{arm}",
                         enable_auto_commit=False, auto_offset_reset="earliest",
                         isolation_level="read_committed" if k.exactly_once else "read_uncommitted",
                         session_timeout_ms=k.session_timeout_ms, heartbeat_interval_ms=k.heartbeat_ms,
                         reconnect_backoff_max_ms=5000)


def reader_consumer(k: KafkaConfig) -> KafkaConsumer:
    """A consumer outside any group, to read given records of the samples topic back."""
    return KafkaConsumer(**kafka_client_kwargs(k, "kafka-python"), group_id=None, enable_auto_commit=False,
                         isolation_level="read_committed" if k.exactly_once else "read_uncommitted",
                         reconnect_backoff_max_ms=5000)


def assign_from(consumer: KafkaConsumer, partitions: list[TopicPartition], covered: dict[int, int]) -> None:
    """Assign partitions and start each after what a checkpoint covers, else at the beginning."""
    consumer.assign(partitions)
    for tp in partitions:
        if tp.partition in covered:
            consumer.seek(tp, covered[tp.partition])
        else:
            consumer.seek_to_beginning(tp)
