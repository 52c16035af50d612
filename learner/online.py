"""`xdm learn`: train one arm incrementally on the samples topic, checkpoint, and publish versions.

The learner assigns itself every partition of the samples topic under its arm's group id and starts from
the offsets stored in its last checkpoint (else the group's committed offsets, else the beginning). It
commits offsets only for samples a checkpoint covers, so a crash replays exactly the uncovered samples.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from learner.checkpoint import load_checkpoint, save_checkpoint
from learner.model import config_for
from learner.publish import Publisher
from learner.trainer import Trainer
from stream.samples import Sample
from stream.wire import MalformedEvent, decode_sample
from xdm.config import Config
from xdm.v1 import events_pb2

log = logging.getLogger(__name__)
MAX_WINDOW = 1000  # a window longer than this is not one the stream can produce: reject the sample


@dataclass
class LearnerStatus:
    steps: int = 0
    samples: int = 0
    versions: list[int] = field(default_factory=list)
    dead_letters: int = 0
    skipped_steps: int = 0
    last_hr50: float = 0.0
    last_mrr50: float = 0.0
    sample_to_trained_ms: float = 0.0


def validate_sample(sample: Sample) -> None:
    if not sample.labels:
        raise MalformedEvent("sample without labels")
    w = sample.windows
    for name, window in (("short", w.short), ("long", w.long), ("unclicked", w.unclicked), ("labels", sample.labels)):
        if len(window) > MAX_WINDOW:
            raise MalformedEvent(f"{name} window of {len(window)} behaviours exceeds {MAX_WINDOW}")
        if any(not b.item.item_id for b in window):
            raise MalformedEvent(f"{name} window holds a behaviour without item id")


class OnlineLearner:
    def __init__(self, cfg: Config, arm: str | None = None, variant: str | None = None) -> None:
        self.cfg = cfg
        self.arm = arm or cfg.learner.arm
        self.variant = variant or cfg.learner.variant
        model_cfg = config_for(self.variant, **_model_overrides(cfg))
        lc = cfg.learner
        self.trainer = Trainer(model_cfg, lr=lc.lr, clip_norm=lc.clip_norm, seed=lc.seed, device=lc.device)
        self.publisher = Publisher(cfg, self.arm, self.variant)
        self.status = LearnerStatus()
        self.version = 0
        self.covered: dict[int, int] = {}  # partition -> next offset covered by trained samples
        self._stop = threading.Event()
        self._producer: KafkaProducer | None = None

    def stop(self) -> None:
        self._stop.set()

    def restore(self, warm_start: str | None = None) -> None:
        """Resume from this arm's checkpoint; else warm-start weights from an offline run's checkpoint."""
        state = load_checkpoint(self.cfg.learner.checkpoint_dir, self.arm)
        if state is not None:
            self.trainer.load_state_dict(state["trainer"])
            self.covered = {int(p): int(o) for p, o in state["offsets"].items()}
            self.version = state["version"]
            log.info("resumed from checkpoint", extra={"arm": self.arm, "steps": self.trainer.steps})
        elif warm_start:
            from learner.checkpoint import load_checkpoint as load

            offline = load(warm_start, "offline")
            if offline is None:
                raise FileNotFoundError(f"no offline run checkpoint under {warm_start}")
            self.trainer.load_state_dict(offline["trainer"])
            log.info("warm start", extra={"arm": self.arm, "from": warm_start})

    def run(self, max_steps: int | None = None, idle_exit_s: float | None = None) -> LearnerStatus:
        consumer = self._consumer()
        try:
            self._loop(consumer, max_steps, idle_exit_s)
        finally:
            consumer.close(autocommit=False)
            self.publisher.close()
            if self._producer:
                self._producer.close(timeout=5)
        return self.status

    def _consumer(self) -> KafkaConsumer:
        k = self.cfg.kafka
        consumer = KafkaConsumer(bootstrap_servers=k.bootstrap, group_id=f"xdm-learner-{self.arm}",
                                 enable_auto_commit=False, auto_offset_reset="earliest",
                                 session_timeout_ms=k.session_timeout_ms, heartbeat_interval_ms=k.heartbeat_ms)
        partitions = _wait_partitions(consumer, k.samples_topic)
        consumer.assign(partitions)
        for tp in partitions:
            if tp.partition in self.covered:
                consumer.seek(tp, self.covered[tp.partition])
        return consumer

    def _loop(self, consumer: KafkaConsumer, max_steps: int | None, idle_exit_s: float | None) -> None:
        lc = self.cfg.learner
        buffer: list[tuple[Sample, int]] = []
        pending: dict[int, int] = {}
        batch_started = time.monotonic()
        last_publish = time.monotonic()
        last_data = time.monotonic()
        steps_at_publish = self.trainer.steps
        steps_at_checkpoint = self.trainer.steps
        while not self._stop.is_set():
            if max_steps is not None and self.trainer.steps >= max_steps:
                break
            polled = consumer.poll(timeout_ms=200, max_records=lc.batch_size - len(buffer))
            for tp, records in sorted(polled.items(), key=lambda kv: kv[0].partition):
                for record in records:
                    pending[tp.partition] = record.offset + 1
                    sample = self._decode(record)
                    if sample is not None:
                        buffer.append(sample)
            if polled:
                last_data = time.monotonic()
            elif idle_exit_s is not None and time.monotonic() - last_data > idle_exit_s:
                break
            full = len(buffer) >= lc.batch_size
            waited = (time.monotonic() - batch_started) * 1000 >= lc.max_wait_ms
            if buffer and (full or waited):
                self._train(buffer)
                buffer = []
                batch_started = time.monotonic()
            if not buffer:
                self.covered.update(pending)  # dead letters included: they are handled for good
            if self.trainer.steps - steps_at_checkpoint >= lc.checkpoint_every_steps and not buffer:
                self._checkpoint(consumer)
                steps_at_checkpoint = self.trainer.steps
            due = (self.trainer.steps - steps_at_publish >= lc.publish_every_steps
                   or (time.monotonic() - last_publish >= lc.publish_every_s and self.trainer.steps > steps_at_publish))
            if due and self._publish():
                steps_at_publish = self.trainer.steps
                last_publish = time.monotonic()
            if not buffer and not polled:
                batch_started = time.monotonic()
        if not buffer and self.trainer.steps > steps_at_checkpoint:
            self._checkpoint(consumer)

    def _decode(self, record) -> tuple[Sample, int] | None:
        try:
            sample, emitted_ms = decode_sample(record.value)
            validate_sample(sample)
            return sample, emitted_ms
        except MalformedEvent as exc:
            self._dead_letter(record, str(exc))
            return None

    def _train(self, buffer: list[tuple[Sample, int]]) -> None:
        stats = self.trainer.step([s for s, _ in buffer])
        now_ms = time.time() * 1000
        emitted = [e for _, e in buffer if e]
        self.status.steps = self.trainer.steps
        self.status.samples = self.trainer.samples_seen
        self.status.skipped_steps = self.trainer.skipped_steps
        self.status.last_hr50, self.status.last_mrr50 = stats.hr50, stats.mrr50
        if emitted:
            self.status.sample_to_trained_ms = now_ms - sum(emitted) / len(emitted)
        log.info("step", extra={"arm": self.arm, "step": self.trainer.steps, "loss": round(stats.loss, 4),
                                "hr50": round(stats.hr50, 4), "mrr50": round(stats.mrr50, 4),
                                "samples": stats.samples, "skipped": stats.skipped})

    def _checkpoint(self, consumer: KafkaConsumer) -> None:
        save_checkpoint(self.cfg.learner.checkpoint_dir, self.arm, {
            "trainer": self.trainer.state_dict(), "offsets": dict(self.covered), "version": self.version,
            "variant": self.variant,
        })
        topic = self.cfg.kafka.samples_topic
        try:
            consumer.commit({TopicPartition(topic, p): OffsetAndMetadata(o, "", -1) for p, o in self.covered.items()})
        except Exception:  # the checkpoint holds the offsets; the group commit is for monitoring tools
            log.warning("offset commit failed; the checkpoint still holds the offsets", exc_info=True)

    def _publish(self) -> bool:
        try:
            self.publisher.publish(self.trainer, self.version + 1)
        except Exception:
            log.exception("publish failed; will retry at the next publish point", extra={"arm": self.arm})
            return False
        self.version += 1
        self.status.versions.append(self.version)
        return True

    def _dead_letter(self, record, reason: str) -> None:
        self.status.dead_letters += 1
        if self._producer is None:
            self._producer = KafkaProducer(bootstrap_servers=self.cfg.kafka.bootstrap)
        letter = events_pb2.DeadLetter(source_topic=record.topic, partition=record.partition, offset=record.offset,
                                       reason=reason, payload=record.value or b"", at_ms=int(time.time() * 1000))
        self._producer.send(self.cfg.kafka.dlq_topic, value=letter.SerializeToString())
        log.warning("sample sent to dead letters", extra={"offset": record.offset, "reason": reason})


def run_learner(cfg: Config, arm: str | None = None, variant: str | None = None, warm_start: str | None = None) -> None:
    """Run until SIGTERM / Ctrl-C; checkpoints before exiting."""
    learner = OnlineLearner(cfg, arm, variant)
    learner.restore(warm_start)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: learner.stop())
    learner.run()


def _wait_partitions(consumer: KafkaConsumer, topic: str, timeout_s: float = 60.0) -> list[TopicPartition]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return [TopicPartition(topic, p) for p in sorted(parts)]
        time.sleep(0.2)
    raise RuntimeError(f"samples topic {topic} does not exist; create topics first (xdm topics)")


def _model_overrides(cfg: Config) -> dict:
    """Model settings from config except the ablation switches, which the variant decides."""
    from dataclasses import asdict

    switches = {"use_unclicked", "fusion", "triplet"}
    return {k: v for k, v in asdict(cfg.model).items() if k not in switches}
