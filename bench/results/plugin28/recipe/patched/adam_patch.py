"""Diagnosis only (not committed): Adam on every non-vocabulary parameter, AdaGrad on the vocabulary tables."""
import os
import sys

import torch

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[5]))  # the repository root
import learner.trainer as T
from learner.trainer import clip_grad_norm

DENSE_LR = float(os.environ.get("DENSE_LR", "1e-3"))
ALL_ADAM = os.environ.get("ALL_ADAM", "") == "1"
orig_init = T.Trainer.__init__


def __init__(self, *a, **k):
    orig_init(self, *a, **k)
    vocab_ids = {id(p) for tab in self.model.vocabulary_tables() for p in tab.parameters()}
    if ALL_ADAM:
        vocab_ids = set()
    dense = [p for p in self.model.parameters() if id(p) not in vocab_ids]
    self.dense_opt = torch.optim.Adam(dense, lr=DENSE_LR)
    tables = [p for p in self.model.parameters() if id(p) in vocab_ids] or [torch.nn.Parameter(torch.zeros(1))]
    self.optimizer = torch.optim.Adagrad(tables, lr=self.lr, initial_accumulator_value=self.adagrad_init)
    print(f"PATCH dense Adam lr {DENSE_LR} over {len(dense)} tensors; AdaGrad over {len(tables)}", flush=True)


def learn(self, batch):
    self.model.train()
    self.model.use_sparse_tables(self.sparse_min_rows())
    parts = self.model.calculate_loss(batch, self.sampler, self.generator, step=self.steps)
    if not torch.isfinite(parts.total):
        return parts
    self.optimizer.zero_grad(set_to_none=True)
    self.dense_opt.zero_grad(set_to_none=True)
    parts.total.backward()
    clip_grad_norm(self.model.parameters(), self.clip_norm)
    scale = min(1.0, (self.steps + 1) / self.lr_warmup_steps) if self.lr_warmup_steps > 0 else 1.0
    for g in self.optimizer.param_groups:
        g["lr"] = self.lr * scale
    for g in self.dense_opt.param_groups:
        g["lr"] = DENSE_LR * scale
    self.optimizer.step()
    self.dense_opt.step()
    self.steps += 1
    return parts


orig_follow = T.Trainer.follow_vocabulary


def follow_vocabulary(self):
    orig_follow(self)
    if not hasattr(self, "dense_opt"):
        return
    for p in self.dense_opt.param_groups[0]["params"]:
        state = self.dense_opt.state.get(p)
        for key in ("exp_avg", "exp_avg_sq"):
            if state and state[key].shape != p.shape:
                grown = torch.zeros_like(p)
                grown[: state[key].shape[0]] = state[key]
                state[key] = grown


def adagrad_init(self, *a, **k):  # the working tree's Trainer defaults to "auto"; the baseline is AdaGrad everywhere
    k["dense_optimizer"] = "adagrad"
    orig_init(self, *a, **k)


if os.environ.get("PATCH_OFF") == "1":
    T.Trainer.__init__ = adagrad_init
else:
    T.Trainer.follow_vocabulary = follow_vocabulary
    T.Trainer.__init__ = __init__
    T.Trainer.learn = learn

from xdm.cli import main  # noqa: E402

sys.argv = ["xdm", *sys.argv[1:]]
main()
