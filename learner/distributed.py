"""Data-parallel online learning: N processes train one arm together (torch.distributed: gloo on CPU,
NCCL between GPUs), each reading a disjoint share of the samples topic's partitions.

Every step, in the same order on every rank:

1. Vocabulary agreement. Embedding tables grow online, so ranks must hand out the same row to the same
   id. Each rank sends the ids of its local batch that the vocabulary does not know yet (items with
   their side-info, profile values) and its label items; every rank then adds all ranks' new ids in
   rank order and counts all labels. The vocabularies stay identical because they start identical and
   see the same additions in the same order (no hashing, no owner round trip: one all_gather).
2. New rows. Growing tables and recycling evicted item rows draw random initial rows from each rank's
   own RNG; rank 0 broadcasts exactly those rows, so the parameters stay identical.
3. Forward and backward on the local batch (an empty batch contributes nothing), then one all-reduce
   of the gradients weighted by local batch size: dense parameters whole, embedding tables only at the
   union of rows some rank touched (the rows of a batch, not of a 30 M-item table): a sparse gradient's
   indices (learner.sparse_item_update), a dense one's nonzero rows. Skip decisions for
   a non-finite loss are taken together. Clipping and AdaGrad then run on identical gradients, so the
   replicas never drift; a checksum at every checkpoint verifies it.

Rank 0 restores and broadcasts the checkpoint, writes checkpoints (with every rank's offsets) and
publishes versions exactly as a single learner does (beside training, never reusing a number). Step,
checkpoint, eviction and exit decisions are taken collectively (one small all-reduce per poll), so all
ranks call the same collectives in the same order. `learner.batch_size` is per rank: a step trains on up
to world_size x batch_size samples.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as dist
from kafka import KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata
from torch import Tensor, nn

from learner.batch import ITEM_KINDS, Vocabulary, collate, profile_kind
from learner.checkpoint import load_checkpoint, save_checkpoint
from learner.model import config_for, pick_device
from learner.online import POLL_MS, LearnerStatus, OnlineLearner, Taken
from learner.progressive import validation_sampling
from learner.trainer import StepStats, Trainer, clip_grad_norm
from xdm.config import Config
from xdm.model_config import ModelConfig, model_overrides

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistributedSettings:
    """Where a rank stands in the group and how to reach rank 0 (the `xdm learn --world-size ...` options)."""

    world_size: int
    rank: int
    master_addr: str = "127.0.0.1"  # rank 0's host: the rendezvous (TCPStore) listens there
    master_port: int = 29500
    backend: str = "auto"  # "auto": nccl when the device is CUDA, else gloo
    timeout_s: float = 1800.0  # longest wait in one collective (rank 0 publishing a large catalogue)

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in a world of {self.world_size} processes")


def partitions_for(rank: int, world_size: int, partitions: Sequence[int]) -> list[int]:
    """This rank's share of the samples partitions (round robin: disjoint, together all of them)."""
    return [p for p in sorted(partitions) if p % world_size == rank]


def rank_device(prefer: str, rank: int) -> str:
    """The device of one rank: with CUDA, one GPU per rank on a host (rank modulo the visible GPUs)."""
    device = pick_device(prefer)
    if device.type == "cuda" and device.index is None:
        local = int(os.environ.get("LOCAL_RANK", rank))
        return f"cuda:{local % torch.cuda.device_count()}"
    return str(device)


class Comm:
    """The collectives the trainer needs, over the default group, plus a gloo group for Python objects."""

    def __init__(self, settings: DistributedSettings, device: str) -> None:
        self.settings = settings
        self.rank = settings.rank
        self.world_size = settings.world_size
        self.device = torch.device(device)
        backend = settings.backend
        if backend == "auto":
            backend = "nccl" if self.device.type == "cuda" else "gloo"
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        timeout = timedelta(seconds=settings.timeout_s)
        dist.init_process_group(backend, init_method=f"tcp://{settings.master_addr}:{settings.master_port}",
                                rank=settings.rank, world_size=settings.world_size, timeout=timeout)
        self.backend = backend
        self.objects = dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else None

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()

    def all_gather_object(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.objects)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        box = [obj if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0, group=self.objects)
        return box[0]

    def all_reduce(self, tensor: Tensor, op: dist.ReduceOp = dist.ReduceOp.SUM) -> Tensor:
        dist.all_reduce(tensor, op=op)
        return tensor

    def broadcast(self, tensor: Tensor) -> Tensor:
        dist.broadcast(tensor, src=0)
        return tensor

    def max_flags(self, *flags: bool) -> list[bool]:
        """Each flag OR-ed over every rank (one small all-reduce)."""
        t = torch.tensor([float(f) for f in flags], device=self.device)
        return [bool(v) for v in self.all_reduce(t, dist.ReduceOp.MAX).tolist()]

    def gather_rows(self, rows: Tensor) -> Tensor:
        """The sorted union of every rank's 1-D index tensor (variable lengths)."""
        size = torch.tensor([rows.numel()], device=self.device)
        sizes = [torch.zeros_like(size) for _ in range(self.world_size)]
        dist.all_gather(sizes, size)
        longest = int(max(s.item() for s in sizes))
        if longest == 0:
            return rows.new_zeros(0)
        padded = torch.full((longest,), -1, dtype=torch.long, device=self.device)
        padded[: rows.numel()] = rows
        everyone = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(everyone, padded)
        union = torch.unique(torch.cat(everyone))
        return union[union >= 0]


@contextlib.contextmanager
def process_group(settings: DistributedSettings, device: str) -> Iterator[Comm]:
    comm = Comm(settings, device)
    try:
        yield comm
    finally:
        comm.close()


# ---- the vocabulary protocol (pure: plain data in, plain data out)

@dataclass
class Footprint:
    """What one rank's batch adds to the vocabulary, in first-seen order, and its label items."""

    items: list[tuple[str, ...]] = field(default_factory=list)  # (item, leaf, top, brand, shop) with a new id
    profile: list[tuple[str, str]] = field(default_factory=list)  # (kind, value) not yet known
    labels: list[str] = field(default_factory=list)  # label item ids, with repeats (sampler counts)
    samples: int = 0


def footprint(samples: Sequence[Any], vocab: Vocabulary, count: bool = True) -> Footprint:
    """The ids of `samples` that `vocab` does not know, in the order collate would meet them; their
    label items unless count=False (a rehearsal batch, counted when it was new)."""
    out = Footprint(samples=len(samples))
    seen_items: set[tuple[str, ...]] = set()
    seen_profile: set[tuple[str, str]] = set()
    for s in samples:
        w = s.windows
        for behaviour in (*w.short, *w.long, *w.unclicked, *s.labels):
            item = behaviour.item
            keys = (item.item_id, item.leaf_cat, item.top_cat, item.brand, item.shop)
            if keys in seen_items:
                continue
            seen_items.add(keys)
            if any(key and vocab.lookup(kind, key) == 0 for kind, key in zip(ITEM_KINDS, keys)):
                out.items.append(keys)
        if count:
            out.labels.extend(b.item.item_id for b in s.labels if b.item.item_id)
        fields = dict(s.profile)
        for name in vocab.profile_fields:
            pair = (profile_kind(name), fields.get(name, ""))
            if pair[1] and pair not in seen_profile and vocab.lookup(*pair) == 0:
                seen_profile.add(pair)
                out.profile.append(pair)
    return out


def apply_footprints(vocab: Vocabulary, footprints: Sequence[Footprint]) -> None:
    """Add every rank's new ids in rank order, then count every label: the same result on every rank."""
    for fp in footprints:
        for keys in fp.items:
            for kind, key in zip(ITEM_KINDS, keys):
                vocab.add(kind, key)
        for kind, key in fp.profile:
            vocab.add(kind, key)
    for fp in footprints:
        for item_id in fp.labels:
            vocab.observe(vocab.lookup("item", item_id))


# ---- the trainer

def embedding_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Tables whose rows follow the vocabulary (grown, recycled, sparsely updated)."""
    return {name: p for name, p in model.named_parameters()
            if name.startswith("embed.tables.") or name == "item_out.weight"}


class DistributedTrainer(Trainer):
    """A Trainer whose step is one synchronous data-parallel step of the whole group."""

    def __init__(self, model_cfg: ModelConfig, comm: Comm, seed: int = 7, **trainer_settings: Any) -> None:
        """`trainer_settings`: the Trainer's own keyword arguments (lr, device, dense_optimizer, ...)."""
        super().__init__(model_cfg, seed=seed, **trainer_settings)
        self.comm = comm
        self.seed = seed
        self.sync_from_rank0()

    def sync_from_rank0(self) -> None:
        """Every parameter from rank 0 (start, restore), then a per-rank RNG for dropout and negatives."""
        with torch.no_grad():
            for p in self.model.parameters():
                self.comm.broadcast(p.data)
        self._decorrelate()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._decorrelate()

    def _decorrelate(self) -> None:
        # Identical dropout masks and negatives on every rank would waste the extra data; the parameters
        # stay identical regardless, since only all-reduced gradients touch them.
        seed = (self.seed * 1_000_003 + self.comm.rank * 7_919 + self.steps) % (2**63)
        torch.manual_seed(seed)
        self.generator.manual_seed(seed)

    def step(self, samples: Sequence[Any], rehearsal: bool = False) -> StepStats:
        comm = self.comm
        emb = embedding_parameters(self.model)
        rows_before = {name: p.shape[0] for name, p in emb.items()}
        footprints = comm.all_gather_object(footprint(samples, self.vocab, count=not rehearsal))
        apply_footprints(self.vocab, footprints)
        recycled = sorted(set(self.vocab.recycled))
        self.follow_vocabulary()
        self._sync_new_rows(rows_before, recycled)
        n_local, n_total = len(samples), sum(fp.samples for fp in footprints)
        batch = collate(samples, self.vocab, grow=False) if samples else None
        self._touch_everywhere(batch, max((s.ts_ms for s in samples), default=0))

        self.model.use_sparse_tables(self.sparse_min_rows())  # on every rank: the layout all-reduced gradients take
        stats = torch.zeros(6, dtype=torch.float64, device=comm.device)  # non-finite, loss, ce, triplet, hr, mrr
        parts = None
        if batch is not None:
            batch = batch.to(self.device)
            hr, mrr = (0.0, 0.0) if rehearsal else self.progressive_validation(batch)
            self.model.train()
            parts = self.model.calculate_loss(batch, self.sampler, self.generator, step=self.steps)
            finite = bool(torch.isfinite(parts.total))
            stats += torch.tensor([0.0 if finite else 1.0, parts.total.item() * n_local if finite else 0.0,
                                   parts.ce.item() * n_local if finite else 0.0,
                                   float(parts.triplet.detach()) * n_local if finite else 0.0,
                                   hr * n_local, mrr * n_local], dtype=torch.float64, device=comm.device)
        comm.all_reduce(stats)
        self.samples_seen += 0 if rehearsal else n_total
        self.zero_grad()
        weight = n_total or 1
        if stats[0] > 0:  # some rank's loss is not finite: every rank skips this update
            self.skipped_steps += 1
            return StepStats(float("nan"), float("nan"), float("nan"), float(stats[4] / weight),
                             float(stats[5] / weight), n_local, skipped=True)
        if parts is not None:
            (parts.total * (n_local / n_total)).backward()  # the all-reduced sum is the mean over the group
        self._all_reduce_gradients(emb)
        clip_grad_norm(self.model.parameters(), self.clip_norm)
        self.warm_up_lr()
        self.optimizer_step()
        self.steps += 1
        s = (stats[1:] / weight).tolist()
        if rehearsal:
            s[3] = s[4] = math.nan
        return StepStats(s[0], s[1], s[2], s[3], s[4], n_local, skipped=False)

    def parameter_checksum(self) -> list[float]:
        """Sum and sum of squares of every parameter (float64): equal on every rank, or the replicas drifted."""
        with torch.no_grad():
            flat = torch.cat([p.detach().double().flatten() for p in self.model.parameters()])
        return [float(flat.sum()), float((flat * flat).sum())]

    # --- internals

    def _touch_everywhere(self, batch, ts_ms: int) -> None:
        """Mark the items of every rank's batch as seen (eviction is by event time, identical everywhere)."""
        local: list[int] = []
        if batch is not None:
            ids = torch.cat([batch.short[..., 0].flatten(), batch.long[..., 0].flatten(),
                             batch.unclicked[..., 0].flatten(), batch.labels[..., 0].flatten()])
            local = torch.unique(ids).tolist()
        for rows, when in self.comm.all_gather_object((local, ts_ms)):
            if rows:
                self.vocab.touch_items(rows, when)

    def _sync_new_rows(self, rows_before: dict[str, int], recycled: list[int]) -> None:
        """Rank 0's values for the rows that were just grown or re-initialised."""
        chunks, places = [], []
        for name, p in embedding_parameters(self.model).items():
            rows = list(range(rows_before[name], p.shape[0]))
            if recycled and (name == "item_out.weight" or name == "embed.tables.item.weight"):
                rows = sorted(set(rows) | {r for r in recycled if r < rows_before[name]})
            if rows:
                index = torch.tensor(rows, dtype=torch.long, device=p.device)
                chunks.append(p.data[index].flatten())
                places.append((p, index))
        if not chunks:
            return
        flat = self.comm.broadcast(torch.cat(chunks).to(self.comm.device))
        offset = 0
        with torch.no_grad():
            for p, index in places:
                n = index.numel() * p.shape[1]
                p.data[index] = flat[offset: offset + n].view(index.numel(), p.shape[1]).to(p.device)
                offset += n

    def _all_reduce_gradients(self, emb: dict[str, nn.Parameter]) -> None:
        """One all-reduce: dense gradients whole, embedding gradients at the union of touched rows. Every
        rank's tables get this step's layout back (sparse or dense), also where its batch was empty."""
        emb_ids = {id(p) for p in emb.values()}
        sparse = {id(table.weight) for table in self.model.vocabulary_tables() if table.sparse}
        dense = [p for p in self.model.parameters() if id(p) not in emb_ids]
        tables = list(emb.values())
        offsets, total = [], 0
        local_rows = []
        for p in tables:  # one index space over all tables: row r of table t is offsets[t] + r
            offsets.append(total)
            if p.grad is not None and p.grad.is_sparse:
                p.grad = p.grad.coalesce()  # sorted unique rows, repeats summed
            if p.grad is not None:
                local_rows.append(_touched_rows(p.grad) + total)
            total += p.shape[0]
        rows = torch.cat(local_rows) if local_rows else torch.zeros(0, dtype=torch.long, device=self.comm.device)
        union = self.comm.gather_rows(rows.to(self.comm.device))
        pieces, table_rows = [], []
        for t, p in enumerate(tables):
            lo, hi = offsets[t], offsets[t] + p.shape[0]
            mine = (union[(union >= lo) & (union < hi)] - lo).to(p.device)
            table_rows.append(mine)
            pieces.append(_gradient_at(p, mine).flatten())
        for p in dense:
            pieces.append((p.grad if p.grad is not None else torch.zeros_like(p)).flatten())
        flat = self.comm.all_reduce(torch.cat(pieces).to(self.comm.device))
        offset = 0
        for p, mine in zip(tables, table_rows):
            n = mine.numel() * p.shape[1]
            values = flat[offset: offset + n].view(mine.numel(), p.shape[1]).to(p.device)
            if id(p) in sparse:
                p.grad = torch.sparse_coo_tensor(mine.unsqueeze(0), values, p.shape, is_coalesced=True)
            else:
                p.grad = torch.zeros_like(p)
                p.grad[mine] = values
            offset += n
        for p in dense:
            p.grad = flat[offset: offset + p.numel()].view_as(p).to(p.device).clone()
            offset += p.numel()


def _touched_rows(grad: Tensor) -> Tensor:
    """The rows a table's gradient has: a coalesced sparse one's indices, a dense one's nonzero rows."""
    if grad.is_sparse:
        return grad._indices()[0]
    return grad.abs().sum(dim=1).nonzero().flatten()


def _gradient_at(p: nn.Parameter, rows: Tensor) -> Tensor:
    """A table's gradient at `rows` [len(rows), D]: sorted, a superset of the rows it touched."""
    grad = p.grad
    if grad is None:
        return p.new_zeros(rows.numel(), p.shape[1])
    if not grad.is_sparse:
        return grad[rows]
    out = p.new_zeros(rows.numel(), p.shape[1])
    out[torch.searchsorted(rows, grad._indices()[0])] = grad._values()
    return out


# ---- the learner loop

@dataclass
class DistributedStatus(LearnerStatus):
    rank: int = 0
    world_size: int = 1
    partitions: list[int] = field(default_factory=list)
    local_samples: int = 0  # samples this rank read and trained on (status.samples counts the group)
    trained_ids: list[str] = field(default_factory=list)  # sample ids this rank trained on (record_ids=True)


class DistributedLearner(OnlineLearner):
    """One rank of a data-parallel learner; the group shares the arm's checkpoint and versions."""

    def __init__(self, cfg: Config, comm: Comm, arm: str | None = None, variant: str | None = None,
                 record_ids: bool = False) -> None:
        super().__init__(cfg, arm, variant)
        lc = cfg.learner
        self.comm = comm
        self.trainer = DistributedTrainer(config_for(self.variant, **model_overrides(cfg.model)), comm, lr=lc.lr,
                                          clip_norm=lc.clip_norm, seed=lc.seed, device=str(comm.device),
                                          threads=lc.torch_threads, adagrad_init=lc.adagrad_init,
                                          lr_warmup_steps=lc.lr_warmup_steps, validation=validation_sampling(lc),
                                          sparse_item_update=lc.sparse_item_update,
                                          dense_optimizer=lc.dense_optimizer, adam_lr=lc.adam_lr)
        self.status = DistributedStatus(rank=comm.rank, world_size=comm.world_size)
        self.record_ids = record_ids

    def restore(self, warm_start: str | None = None) -> None:
        """Rank 0 reads the arm's checkpoint (else the warm start) and broadcasts it to the group."""
        state = None
        if self.comm.rank == 0:
            state = load_checkpoint(self.cfg.learner.checkpoint_dir, self.arm)
            if state is None and warm_start:
                offline = load_checkpoint(warm_start, "offline")
                if offline is None:
                    raise FileNotFoundError(f"no offline checkpoint under {warm_start}/offline; run `xdm train` first")
                state = {"trainer": offline["trainer"], "offsets": {}, "version": 0}
        state = self.comm.broadcast_object(state)
        if state is None:
            return
        self._resume(state, _seen_for(self.comm.rank, self.comm.world_size, state),
                     _rehearsal_for(self.comm.rank, self.comm.world_size, state))
        log.info("resumed", extra={"arm": self.arm, "rank": self.comm.rank, "steps": self.trainer.steps,
                                   "version": self.version})

    # --- the hooks of OnlineLearner._loop: one loop, every decision taken by the group

    def _share(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        """This rank's share of the samples partitions; its checkpointed offsets of the others are dropped."""
        mine = partitions_for(self.comm.rank, self.comm.world_size, [tp.partition for tp in partitions])
        if not mine:
            log.warning("more ranks than samples partitions: this rank only joins the collectives",
                        extra={"rank": self.comm.rank, "partitions": len(partitions)})
        self.status.partitions = mine
        self.covered = {p: o for p, o in self.covered.items() if p in mine}
        return [tp for tp in partitions if tp.partition in mine]

    def _poll(self, consumer: KafkaConsumer, room: int) -> dict:
        if not self.status.partitions:  # nothing to read: wait as long as a poll would, then join the decisions
            time.sleep(POLL_MS / 1000)
            return {}
        return super()._poll(consumer, room)

    def _agree(self, *flags: bool) -> list[bool]:
        """Each flag OR-ed over the group, so every rank steps, checkpoints and exits at the same iteration."""
        return self.comm.max_flags(*flags)

    def _train(self, buffer: list[Taken]) -> None:
        super()._train(buffer)  # every rank, its buffer possibly empty: one group step
        self.status.local_samples += len(buffer)
        if self.record_ids:
            self.status.trained_ids.extend(t.sample.sample_id for t in buffer)

    def _publish_point(self) -> None:
        # Publishing involves no collective: rank 0 alone snapshots and publishes on a thread of its own.
        if self.comm.rank == 0:
            super()._publish_point()

    def _checkpoint(self, consumer: KafkaConsumer) -> None:
        """Gather every rank's offsets and checksum; rank 0 writes the one checkpoint of the arm."""
        mine = {p: o for p, o in self.covered.items() if p in self.status.partitions}
        gathered = self.comm.all_gather_object((mine, self.trainer.parameter_checksum(), self.seen.state_dict(),
                                                self.rehearsal.state_dict()))
        sums = [c for _, c, _, _ in gathered]
        if any(c != sums[0] for c in sums):
            raise RuntimeError(f"data-parallel replicas drifted apart at step {self.trainer.steps}: {sums}")
        if self.comm.rank == 0:
            offsets: dict[int, int] = {}
            for part, _, _, _ in gathered:
                offsets.update(part)
            save_checkpoint(self.cfg.learner.checkpoint_dir, self.arm, {
                "trainer": self.trainer.state_dict(), "offsets": offsets, "version": self.version,
                "variant": self.variant, "model_config": asdict(self.trainer.model.cfg),
                "world_size": self.comm.world_size, "seen_by_rank": [ids for _, _, ids, _ in gathered],
                "rehearsal_by_rank": [memory for _, _, _, memory in gathered],
            })
        topic = self.cfg.kafka.samples_topic
        try:  # each rank commits its own partitions; the checkpoint is what resumes
            if mine:
                consumer.commit({TopicPartition(topic, p): OffsetAndMetadata(o, "", -1) for p, o in mine.items()})
        except Exception:
            log.warning("offset commit failed; the checkpoint still holds the offsets", exc_info=True)


def run_distributed_learner(cfg: Config, settings: DistributedSettings, arm: str | None = None,
                            variant: str | None = None, warm_start: str | None = None,
                            max_steps: int | None = None, idle_exit_s: float | None = None) -> DistributedStatus:
    """One rank until SIGTERM / Ctrl-C on any rank (or max_steps / idle_exit_s); what `xdm learn --world-size` runs."""
    import signal

    from prometheus_client import start_http_server

    if cfg.learner.metrics_port:
        start_http_server(cfg.learner.metrics_port + settings.rank, addr="127.0.0.1")
    with process_group(settings, rank_device(cfg.learner.device, settings.rank)) as comm:
        learner = DistributedLearner(cfg, comm, arm, variant)
        learner.restore(warm_start)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: learner.stop())
        return learner.run(max_steps, idle_exit_s)


def _seen_for(rank: int, world_size: int, state: dict) -> list[str]:
    """The sample ids this rank had taken: its own list when the group kept its size (same partitions),
    else every rank's (ids of other partitions never arrive, so they only take room)."""
    by_rank = state.get("seen_by_rank") or []
    if len(by_rank) == world_size:
        return by_rank[rank]
    return [sample_id for ids in by_rank for sample_id in ids]


def _rehearsal_for(rank: int, world_size: int, state: dict) -> dict | None:
    """This rank's rehearsal memory when the group kept its size; else none (its partitions changed, and
    a memory drawn from other partitions would make the ranks' batches depend on the old layout)."""
    by_rank = state.get("rehearsal_by_rank") or []
    if len(by_rank) == world_size:
        return by_rank[rank]
    if by_rank:
        log.warning("group size changed: rehearsal memory starts empty", extra={"rank": rank})
    return None
