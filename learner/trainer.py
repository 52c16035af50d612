"""One optimiser step at a time over lists of samples, shared by the online learner and offline training.

AdaGrad with lr 0.1 and gradient clipping at norm 5 (papers §4.3). AdaGrad's accumulator starts at
`adagrad_init`, torch's 0 by default, so a weight's first update is ±lr whatever its gradient. TensorFlow
(the papers' framework) starts at 0.1, but its losses are sums over the batch while ours are means, so
our gradients are 1/256 of theirs and 0.1 dominates them: measured on the 6,000-user, 14-day world
(SDM, 3 epochs), HR@50 0.337 with 0, 0.287 with 1e-3, 0.281 with 0.1 even at lr 0.5. The large first
steps are what blow the metric loss up early: measured there, the first step of XDM moved h, n and c so far
that the triplet read 12,606 at step 2 (SDM's cross-entropy jumped from 6 to 24 too), and within 100
steps n and c sat on one saturated tanh corner. `lr_warmup_steps` ramps the learning rate in linearly,
so the accumulators fill with real gradients before steps get large: XDM no longer collapses (every
distance grows over 3 epochs) and SDM learns as before (HR@50 0.332 vs 0.337). Rows grown or recycled
later start from `adagrad_init` too. Progressive validation: each batch is
scored (HR@50, MRR@50 against its own labels) BEFORE the model trains on it, so the running figures are
honest out-of-sample estimates of a model that learns online; above a catalogue size it scores a sample of
samples and items (learner/progressive.py). The sampler follows the vocabulary's counts row by row
(only the rows counted since the last step move), so a step costs nothing per catalogue item there.

The model update does not either, above a catalogue size: with `sparse_item_update` on, the tables whose
rows follow the vocabulary (item input and output, side-info) get row-sparse gradients, holding only the
rows the batch looked up (the sampled softmax's positives, negatives and skipped items included), and
AdaGrad updates just those rows. Dense gradients of a 1 M-row table and a dense AdaGrad pass over it cost
more than the rest of the step (bench/learner_scale.py). Both paths keep AdaGrad's accumulator as one
dense tensor per table (a row without gradient keeps its sum and its weights, in either), so checkpoints
are the same in both and the path may change between steps. "auto" makes a table sparse once it has
more than SPARSE_AUTO_MIN_ROWS rows: a smaller one updates faster dense (coalescing the ~30 k rows a
batch looks up costs more than a pass over the table: at 10 k items a step's update took 0.58 s with
every table sparse, 0.35 s dense), and its results stay those of before bit for bit
(sparse sums repeated rows in another order, which moves the last float bits).

The dense layers (everything but those tables) may take Adam instead (`dense_optimizer`): "auto" gives
each base the optimiser its own paper trains it with, AdaGrad for SDM (papers §4.3) and GRU4Rec (Hidasi
et al. 2016), Adam for SASRec (Kang & McAuley 2018) and HSTU (Zhai et al. 2024). Measured on
exposure-follows-clicks' validation days (bench/results/plugin28/recipe/): our HSTU base 45.8 % HR@50 with
AdaGrad everywhere, 49.2 % with Adam at 1e-3 on its dense layers (47.6 % with Adam on the tables too).
The tables keep AdaGrad either way: their rows grow, recycle and update sparsely, which is what AdaGrad's
per-row sums are kept for above. AdaGrad over every parameter is what every run before this setting
trained with, and its checkpoints load as before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from learner.batch import Batch, Vocabulary, collate
from learner.model import XDM, LossParts, pick_device
from learner.progressive import ValidationSampling, validate_every_item, validate_sampled
from learner.sampler import LogUniformSampler
from xdm.model_config import ModelConfig


SPARSE_ITEM_UPDATES = ("auto", "on", "off")
SPARSE_AUTO_MIN_ROWS = 100_000  # "auto": a table of more rows gets sparse updates (as learner.validation_full_max_items)
DENSE_OPTIMIZERS = ("auto", "adagrad", "adam")
ADAM_BASES = ("sasrec", "hstu")  # "auto": the bases whose papers train them with Adam (module docstring)


def dense_optimizer_for(choice: str, base: str) -> str:
    """The optimiser of the dense layers a `dense_optimizer` setting gives a model of this base."""
    if choice not in DENSE_OPTIMIZERS:
        raise ValueError(f"dense_optimizer must be one of {DENSE_OPTIMIZERS}, got {choice!r}")
    if choice != "auto":
        return choice
    return "adam" if base in ADAM_BASES else "adagrad"


def clip_grad_norm(parameters: Iterable[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """torch.nn.utils.clip_grad_norm_ (L2) that also takes sparse gradients, which torch's refuses.

    A sparse gradient is coalesced first (repeated rows summed), so the norm of its values is the norm of
    the dense gradient it stands for; the total is the L2 norm of the per-tensor norms and every gradient
    is scaled by min(1, max_norm / (total + 1e-6)), as torch does. With only dense gradients it is torch's
    own. Returns the total norm before clipping.
    """
    params = [p for p in parameters if p.grad is not None]
    if not any(p.grad.is_sparse for p in params):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    for p in params:
        if p.grad.is_sparse:
            p.grad = p.grad.coalesce()
    grads = [p.grad._values() if p.grad.is_sparse else p.grad for p in params]
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for grad in grads:  # a coalesced gradient's values are a view: scaling them scales the gradient
        grad.mul_(scale)
    return total


@dataclass(frozen=True)
class StepStats:
    loss: float
    ce: float
    triplet: float
    hr50: float  # progressive validation, before the update
    mrr50: float
    samples: int
    skipped: bool  # non-finite loss: the update was not applied


class Trainer:
    def __init__(self, model_cfg: ModelConfig, lr: float = 0.1, clip_norm: float = 5.0, seed: int = 7,
                 device: str = "auto", vocab: Vocabulary | None = None, threads: int = 1,
                 adagrad_init: float = 0.0, lr_warmup_steps: int = 0,
                 validation: ValidationSampling | None = None, sparse_item_update: str = "auto",
                 dense_optimizer: str = "auto", adam_lr: float = 1e-3) -> None:
        if sparse_item_update not in SPARSE_ITEM_UPDATES:
            raise ValueError(f"sparse_item_update must be one of {SPARSE_ITEM_UPDATES}, got {sparse_item_update!r}")
        # Measured here: a tiny model stepped 70x slower with 2 threads than with 1 while another process
        # used the second core (OpenMP workers spin-wait), so the thread count is explicit.
        torch.set_num_threads(max(1, threads))
        torch.manual_seed(seed)
        self.device = pick_device(device)
        self.vocab = vocab or Vocabulary(model_cfg.profile_field_names)
        self.model = XDM(model_cfg, self.vocab.sizes()).to(self.device)
        self.adagrad_init = adagrad_init
        self.lr = lr
        self.lr_warmup_steps = lr_warmup_steps
        self.dense_optimizer_kind = dense_optimizer_for(dense_optimizer, model_cfg.base)
        self.adam_lr = adam_lr
        self.optimizer = self._adagrad(lr)
        self.dense_optimizer = self._adam()
        self.clip_norm = clip_norm
        self.sparse_item_update = sparse_item_update
        self.sampler: LogUniformSampler | None = None  # made at the first step: it needs one item
        self.generator = torch.Generator().manual_seed(seed)
        self.validation = validation or ValidationSampling()
        # its own stream, so sampled validation leaves the negatives and dropout of training as they were
        self.validation_generator = torch.Generator().manual_seed(seed)
        self.steps = 0
        self.samples_seen = 0
        self.skipped_steps = 0

    def step(self, samples: Sequence[Any], rehearsal: bool = False) -> StepStats:
        """One update on `samples`. A rehearsal step (learner/rehearsal.py) trains on samples taken before:
        it neither counts their labels again nor scores them (hr50 / mrr50 are NaN), nor adds to samples_seen."""
        batch = collate(samples, self.vocab, grow=True, count=not rehearsal)
        self.follow_vocabulary()
        self._touch(batch, max(s.ts_ms for s in samples))
        batch = batch.to(self.device)
        hr, mrr = (math.nan, math.nan) if rehearsal else self.progressive_validation(batch)
        parts = self.learn(batch)
        self.samples_seen += 0 if rehearsal else len(samples)
        if not torch.isfinite(parts.total):
            self.skipped_steps += 1
            return StepStats(math.nan, math.nan, math.nan, hr, mrr, len(samples), skipped=True)
        return StepStats(parts.total.item(), parts.ce.item(), float(parts.triplet.detach()), hr, mrr, len(samples), False)

    def learn(self, batch: Batch) -> LossParts:
        """The model update of a step on a collated batch: the loss (eq. 9), backward, clipping, AdaGrad.
        A non-finite loss changes nothing (the caller counts the skip)."""
        self.model.train()
        self.model.use_sparse_tables(self.sparse_min_rows())
        parts = self.model.calculate_loss(batch, self.sampler, self.generator, step=self.steps)
        if not torch.isfinite(parts.total):
            return parts
        self.zero_grad()
        parts.total.backward()
        clip_grad_norm(self.model.parameters(), self.clip_norm)
        self.warm_up_lr()
        self.optimizer_step()
        self.steps += 1
        return parts

    def zero_grad(self) -> None:
        for optimizer in self._optimizers():
            optimizer.zero_grad(set_to_none=True)

    def optimizer_step(self) -> None:
        for optimizer in self._optimizers():
            optimizer.step()

    def _optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.optimizer] if self.dense_optimizer is None else [self.optimizer, self.dense_optimizer]

    def sparse_min_rows(self) -> int | None:
        """Vocabulary tables of more rows get row-sparse gradients (learner.sparse_item_update); None: none."""
        return {"auto": SPARSE_AUTO_MIN_ROWS, "on": 0, "off": None}[self.sparse_item_update]

    def warm_up_lr(self) -> None:
        """Set the learning rate of the coming step: lr x (steps + 1) / lr_warmup_steps until it reaches lr."""
        scale = min(1.0, (self.steps + 1) / self.lr_warmup_steps) if self.lr_warmup_steps > 0 else 1.0
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr * scale
        for group in self.dense_optimizer.param_groups if self.dense_optimizer else []:
            group["lr"] = self.adam_lr * scale

    def progressive_validation(self, batch) -> tuple[float, float]:
        """HR@50, MRR@50 of the batch before training on it: exact up to validation.full_max_items items."""
        self.model.eval()
        if self.model.n_items - 1 <= self.validation.full_max_items:
            return validate_every_item(self.model, batch)
        return validate_sampled(self.model, batch, self.validation, self.validation_generator)

    def evict_items(self, before_ms: int) -> int:
        """Free the rows of items not seen in any sample since before_ms (event time); returns how many."""
        return len(self.vocab.evict_items(before_ms))

    def _touch(self, batch, ts_ms: int) -> None:
        ids = torch.cat([batch.short[..., 0].flatten(), batch.long[..., 0].flatten(),
                         batch.unclicked[..., 0].flatten(), batch.labels[..., 0].flatten()])
        self.vocab.touch_items(torch.unique(ids).tolist(), ts_ms)

    def follow_vocabulary(self) -> None:
        """New ids got rows in the vocabulary: grow the tables, AdaGrad's state and the sampler's ranks.

        Rows recycled from evicted items are re-initialised, with their AdaGrad accumulators back at the
        initial value, so the new item learns from scratch and not from its predecessor's history.
        """
        if self.vocab.recycled:
            rows = sorted(set(self.vocab.recycled))
            self.vocab.recycled.clear()
            for param in self.model.reset_item_rows(rows):
                state = self.optimizer.state.get(param)
                if state and state["sum"].shape[0] > max(rows):
                    state["sum"][rows] = self.adagrad_init
        if self.model.grow_to(self.vocab.sizes()):
            for group in self.optimizer.param_groups:
                for param in group["params"]:
                    state = self.optimizer.state.get(param)
                    if state and state["sum"].shape != param.shape:
                        grown = torch.full_like(param, self.adagrad_init)
                        grown[: state["sum"].shape[0]] = state["sum"]
                        state["sum"] = grown
        self._follow_counts()

    def _follow_counts(self) -> None:
        """Move the rows counted (or evicted) since the last step in the sampler's ranking, in row order
        (ties then come out the same on every rank of a group and after a restore)."""
        vocab = self.vocab
        if self.sampler is None:
            self.sampler = LogUniformSampler(vocab.counts)
            vocab.recounted.clear()
            return
        self.sampler.grow(vocab.size("item") - 1)
        rows = sorted(vocab.recounted)
        vocab.recounted.clear()
        self.sampler.set_counts(rows, [vocab.count(row) for row in rows])

    def _recount_from_vocabulary(self) -> None:
        """Mark the rows whose vocabulary count differs from the restored sampler's (counted or evicted
        after the sampler last followed them), so the next step moves them as it would have without a restart."""
        vocab_counts = np.asarray(self.vocab.counts, dtype=np.int64)
        sampler_counts = self.sampler.counts()
        width = max(vocab_counts.size, sampler_counts.size)
        differ = np.flatnonzero(np.pad(vocab_counts, (0, width - vocab_counts.size))
                                != np.pad(sampler_counts, (0, width - sampler_counts.size)))
        self.vocab.recounted.update(int(row) for row in differ if row < vocab_counts.size)

    def _adagrad(self, lr: float) -> torch.optim.Adagrad:
        """AdaGrad over the vocabulary tables, and over every other parameter too unless Adam has them."""
        params = self.model.parameters() if self.dense_optimizer_kind == "adagrad" else self._parameters(tables=True)
        return torch.optim.Adagrad(params, lr=lr, initial_accumulator_value=self.adagrad_init)

    def _adam(self) -> torch.optim.Adam | None:
        if self.dense_optimizer_kind == "adagrad":
            return None
        return torch.optim.Adam(self._parameters(tables=False), lr=self.adam_lr)

    def _parameters(self, tables: bool) -> list[torch.nn.Parameter]:
        """The model's parameters that are (tables=True) or are not its vocabulary tables, in model order."""
        table_ids = {id(table.weight) for table in self.model.vocabulary_tables()}
        return [p for p in self.model.parameters() if (id(p) in table_ids) == tables]

    def item_vectors(self) -> tuple[list[str], "torch.Tensor"]:
        """(item ids, output vectors) for every item row except padding."""
        weight = self.model.item_vectors().detach().cpu()
        rows = [row for row in self.vocab.live_items() if row < weight.shape[0]]
        return [self.vocab.key("item", row) for row in rows], weight[rows]

    def popular(self, n: int = 500) -> list[str]:
        counts = self.vocab.counts
        order = sorted(self.vocab.live_items(), key=lambda r: (-counts[r], r))[:n]
        return [self.vocab.key("item", r) for r in order if counts[r] > 0]

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "dense_optimizer": self.dense_optimizer.state_dict() if self.dense_optimizer else None,
            "dense_optimizer_kind": self.dense_optimizer_kind,
            "vocab": self.vocab.state_dict(),
            "sampler": self.sampler.state_dict() if self.sampler else None,
            "generator": self.generator.get_state(),
            "validation_generator": self.validation_generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "steps": self.steps,
            "samples_seen": self.samples_seen,
            "skipped_steps": self.skipped_steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.vocab.load_state_dict(state["vocab"])
        self.model.load_state_dict(state["model"])
        # a model goes on with the optimiser it was trained with (checkpoints before the setting: AdaGrad)
        self.dense_optimizer_kind = state.get("dense_optimizer_kind", "adagrad")
        self.optimizer = self._adagrad(self.optimizer.param_groups[0]["lr"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.dense_optimizer = self._adam()
        if self.dense_optimizer is not None:
            self.dense_optimizer.load_state_dict(state["dense_optimizer"])
        self.sampler = None
        if state["sampler"]:
            self.sampler = LogUniformSampler([0, 0])
            self.sampler.load_state_dict(state["sampler"])
            self._recount_from_vocabulary()
        self.generator.set_state(state["generator"])
        if "validation_generator" in state:  # checkpoints before sampled validation have none
            self.validation_generator.set_state(state["validation_generator"])
        torch.set_rng_state(state["torch_rng"])
        self.steps = state["steps"]
        self.samples_seen = state["samples_seen"]
        self.skipped_steps = state["skipped_steps"]
