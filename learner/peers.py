"""Peer baselines from torch-rechub (GRU4Rec, NARM, SASRec, HSTU) on the same samples, split and metrics as XDM.

torch-rechub 0.9.0 is an optional dependency (`pip install '.[bench]'`). Its package imports
scikit-learn at load time (torch_rechub/utils/data.py, for AUC helpers), so the extra needs it too;
without both, `PeerUnavailable` says so. The models are torch-rechub's own classes, unchanged; this module
only feeds them our samples and trains them:

- input: the sample's clicked history, the long-term then the short-term window (oldest first), the
  newest MAX_LEN item ids; an empty history is the single token NO_CLICK. These models read item ids
  only (no side info, no unclicked window, no timestamps: HSTU runs without its time embedding and
  bias). GRU4Rec also reads the user profile fields as its
  user features (its YouTube-DNN-style user tower), or one constant feature when the log has none.
- objective: softmax cross-entropy of the user vector against EVERY item, averaged over the sample's
  labels (the full version of XDM's sampled softmax; 5 k items make it cheap). GRU4Rec's vectors are
  L2-normalised by the library, so its logits are cosine / GRU4REC_TEMPERATURE.
- optimiser: Adam, the optimiser these implementations are published with, at lr PEER_LR[name], clip 5;
  the same epochs, batch size, length-bucketed batches and seed as the XDM rows. The learning rate is the
  only setting fixed per peer, by the #28 peer check on validation days (PEER_LR says why).
- evaluation: the same full sort over the peer's item vocabulary and the same metrics and bootstrap
  (learner.offline); labels it never saw count as misses.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from learner.batch import length_buckets
from learner.data import OfflineData, SampleTable
from learner.offline import (
    CUTOFFS,
    EVAL_BATCH,
    TrainSettings,
    evaluation_result,
    metric_keys,
    record_metrics,
)
from xdm.errors import XdmError
from xdm.progress import progress_bar

log = logging.getLogger(__name__)

PEERS = ("gru4rec", "narm", "sasrec", "hstu")
MAX_LEN = 50  # newest clicked items a peer reads (SASRec's position table size)
NO_CLICK = 1  # item row of the "no clicked history" token; row 0 is padding
EMBED_DIM = 64  # same Le as the XDM rows' default
# Adam's lr per peer. 1e-3 (the library's default) left SASRec, HSTU and NARM below the popularity floor on
# the 50,000-item world's validation days (HR@50 4.0, 3.2, 4.0 % vs the floor's 4.3 %; loss still 8.3-9.0
# after 3 epochs of 142 steps: a softmax over 50 k items barely moved); at 1e-2 they reach 20.8, 18.0 and
# 21.3 % (SDM 15.4 %). GRU4Rec's cosine logits / temperature learn at 1e-3 (18.7 %). Fixed for every world,
# as docs/experiments/plugin-protocol.md's amendment of 2026-12-07 19:40 UTC records.
PEER_LR = {"gru4rec": 1e-3, "narm": 1e-2, "sasrec": 1e-2, "hstu": 1e-2}
CLIP_NORM = 5.0
GRU4REC_TEMPERATURE = 0.05  # cosine logits / temperature
HSTU_SHAPE = {"n_heads": 2, "n_layers": 2, "dqk": 32, "dv": 32}  # two layers as our own HSTU base; heads of 32


def recipe(name: str, lr: float | None = None) -> dict[str, Any]:
    """What peer `name` is trained with besides the shared TrainSettings (recorded in run.json; a resumed
    ablation retrains a peer row whose recipe changed, and only that peer's). `lr` replaces PEER_LR[name]."""
    common = {"library": "torch-rechub 0.9.0", "embed_dim": EMBED_DIM, "max_len": MAX_LEN,
              "optimizer": f"Adam lr {PEER_LR[name] if lr is None else lr}, clip {CLIP_NORM}"}
    own = {"gru4rec": {"gru4rec_temperature": GRU4REC_TEMPERATURE},
           "hstu": {"hstu": {**HSTU_SHAPE, "time_embedding": False}},
           "narm": {"narm_init": "Xavier-uniform A1, A2, v, B; items N(0, 0.01) (_scaled_narm_init)"}}
    return {**common, **own.get(name, {})}


class PeerUnavailable(XdmError):
    """torch-rechub (or what it imports) is missing."""


def _rechub():
    try:
        from torch_rechub.basic.features import SequenceFeature, SparseFeature
        from torch_rechub.models.generative.hstu import HSTUModel
        from torch_rechub.models.matching import NARM, SASRec, GRU4Rec
    except ImportError as exc:
        raise PeerUnavailable(
            f"--peers needs torch-rechub 0.9.0 and scikit-learn (torch-rechub imports it at load time): "
            f"pip install '.[bench]' ({exc})") from None
    return SequenceFeature, SparseFeature, GRU4Rec, NARM, SASRec, HSTUModel


class PeerInputs:
    """Item and profile id maps of the training samples; turns samples into the peers' tensors."""

    def __init__(self, train: SampleTable) -> None:
        self.items: dict[str, int] = {}
        self.keys: list[str] = ["", "<no-click>"]
        self.fields = sorted({name for profile in train.profiles.values() for name, _ in profile})
        self.values: dict[str, dict[str, int]] = {f: {} for f in self.fields}
        for i in range(len(train)):
            s = train[i]
            for b in (*s.windows.long, *s.windows.short, *s.labels):
                self._add(b.item.item_id)
        for profile in train.profiles.values():
            for name, value in profile:
                self.values[name].setdefault(value, len(self.values[name]) + 1)  # 0 = unknown

    @property
    def n_items(self) -> int:
        return len(self.keys)

    def _add(self, item_id: str) -> None:
        if item_id not in self.items:
            self.items[item_id] = len(self.keys)
            self.keys.append(item_id)

    def history(self, samples: list, left_pad: bool, fixed: bool) -> Tensor:
        rows = []
        for s in samples:
            ids = [self.items.get(b.item.item_id, 0) for b in (*s.windows.long, *s.windows.short)]
            ids = [r for r in ids if r][-MAX_LEN:] or [NO_CLICK]
            rows.append(ids)
        width = MAX_LEN if fixed else max(len(r) for r in rows)
        out = torch.zeros(len(rows), width, dtype=torch.long)
        for b, r in enumerate(rows):
            if left_pad:
                out[b, width - len(r):] = torch.tensor(r)
            else:
                out[b, : len(r)] = torch.tensor(r)
        return out

    def labels(self, samples: list) -> Tensor:
        rows = [[self.items.get(b.item.item_id, 0) for b in s.labels] for s in samples]
        out = torch.zeros(len(rows), max(1, max(len(r) for r in rows)), dtype=torch.long)
        for b, r in enumerate(rows):
            out[b, : len(r)] = torch.tensor(r, dtype=torch.long)
        return out

    def profile(self, samples: list) -> dict[str, Tensor]:
        if not self.fields:
            return {"constant": torch.zeros(len(samples), dtype=torch.long)}
        out = {}
        for name in self.fields:
            out[f"profile_{name}"] = torch.tensor(
                [self.values[name].get(dict(s.profile).get(name, ""), 0) for s in samples], dtype=torch.long)
        return out


class Peer(nn.Module):
    """One torch-rechub model behind two calls: user vectors of samples, and the item table."""

    def __init__(self, name: str, inputs: PeerInputs) -> None:
        super().__init__()
        SequenceFeature, SparseFeature, GRU4Rec, NARM, SASRec, HSTUModel = _rechub()
        self.name, self.inputs = name, inputs
        n, d = inputs.n_items, EMBED_DIM
        if name == "gru4rec":
            if inputs.fields:
                users = [SparseFeature(f"profile_{f}", len(inputs.values[f]) + 1, d) for f in inputs.fields]
            else:
                users = [SparseFeature("constant", 1, d)]
            self.model = GRU4Rec(users, [SequenceFeature("hist", n, d, pooling="concat", shared_with="item")],
                                 [SparseFeature("item", n, d)], [], {"dims": [d]})
        elif name == "narm":
            self.model = NARM(SequenceFeature("hist", n, d), d, emb_dropout_p=0.25, session_rep_dropout_p=0.5)
            _scaled_narm_init(self.model)
        elif name == "sasrec":
            seq = SequenceFeature("seq", n, d, pooling="concat", padding_idx=0)
            self.model = SASRec([seq, SequenceFeature("pos", n, d, pooling="concat", shared_with="seq"),
                                 SequenceFeature("neg", n, d, pooling="concat", shared_with="seq")],
                                max_len=MAX_LEN, dropout_rate=0.2, num_blocks=2, num_heads=1)
        elif name == "hstu":
            # No timestamp reaches the peers (nor our bases): the time embedding and bias stay off.
            self.model = HSTUModel(n, d_model=d, max_seq_len=MAX_LEN, dropout=0.2, use_time_embedding=False,
                                   **HSTU_SHAPE)
        else:
            raise ValueError(f"unknown peer {name!r}; choose one of {', '.join(PEERS)}")
        self.model.mode = "user"  # user_tower returns [B, D] user vectors

    def user_vectors(self, samples: list) -> Tensor:
        if self.name == "gru4rec":
            x = {"hist": self.inputs.history(samples, left_pad=True, fixed=False), **self.inputs.profile(samples)}
        elif self.name == "narm":
            x = {"hist": self.inputs.history(samples, left_pad=False, fixed=False)}
        elif self.name == "hstu":
            return self._hstu_user_vectors(self.inputs.history(samples, left_pad=False, fixed=False))
        else:
            x = {"seq": self.inputs.history(samples, left_pad=False, fixed=True)}
        return self.model.user_tower(x)

    def _hstu_user_vectors(self, x: Tensor) -> Tensor:
        """HSTUModel.forward's own layers up to its output, read at each sequence's newest click: its forward
        returns logits for every position over every item, [B, L, N], which at 50 k items is gigabytes."""
        m = self.model
        mask = x.ne(0)
        h = m.token_embedding(x) + m.position_embedding(torch.arange(x.shape[1], device=x.device)).unsqueeze(0)
        h = m.dropout(h * mask.unsqueeze(-1).to(h.dtype))
        h = m.hstu_block(h, padding_mask=mask, time_diffs=None)
        newest = mask.sum(1).clamp(min=1) - 1
        return h[torch.arange(x.shape[0], device=x.device), newest]

    def item_vectors(self) -> Tensor:
        if self.name == "gru4rec":
            return F.normalize(self.model.embedding.embed_dict["item"].weight, p=2, dim=-1)
        if self.name == "narm":
            return self.model.item_emb.weight
        if self.name == "hstu":
            return self.model.token_embedding.weight  # tied output projection, as HSTUModel scores
        return self.model.item_emb.embed_dict["seq"].weight

    def scores(self, samples: list) -> Tensor:
        logits = self.user_vectors(samples) @ self.item_vectors().T
        if self.name == "gru4rec":
            logits = logits / GRU4REC_TEMPERATURE
        if self.name == "hstu":
            logits = logits + self.model.output_bias
        logits[:, :2] = float("-inf")  # padding and the no-click token are never recommended
        return logits


def _scaled_narm_init(narm: nn.Module) -> None:
    """torch-rechub's NARM draws its attention (A1, A2, v) and bilinear (B) matrices from the standard
    normal and its item table from torch's N(0, 1): with Le 64 a user vector's logits start with a standard
    deviation near 40, a saturated softmax that Adam at 1e-3 does not leave in 3 epochs. The #28 peer check
    on validation days (docs/experiments/plugin-protocol.md) found NARM below the popularity floor
    (exposure-follows-clicks: HR@50 9.5 % vs 25.0 %); Xavier-uniform matrices gave 23.9 %, and with the item
    table at N(0, 0.01) 29.7 %. Fixed here for every world, as the protocol says; the layers are unchanged."""
    for matrix in (narm.a_1, narm.a_2, narm.v, narm.b):
        nn.init.xavier_uniform_(matrix)
    nn.init.normal_(narm.item_emb.weight, std=0.01)
    with torch.no_grad():
        narm.item_emb.weight[0].zero_()  # padding


def full_softmax_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean over samples of the mean over their labels of −log softmax(logits)[label]."""
    log_p = F.log_softmax(logits, dim=-1).gather(1, labels)
    valid = labels > 0
    per_sample = -(log_p * valid).sum(1) / valid.sum(1).clamp(min=1)
    return per_sample[valid.any(1)].mean() if valid.any() else logits.sum() * 0


def train_and_evaluate_peer(name: str, data: OfflineData, out_dir: Path, settings: TrainSettings,
                            n_boot: int, seed: int, progress: bool = True, lr: float | None = None) -> dict[str, Any]:
    """Train one peer on data.train and return its evaluation (the same shape as offline.evaluate's).
    `lr` replaces the peer's Adam rate PEER_LR[name] (bench/peer_lr.py's search; run.json records it)."""
    _rechub()
    torch.set_num_threads(max(1, settings.threads))  # as the Trainer does for the XDM rows
    torch.manual_seed(settings.seed)
    rng = random.Random(settings.seed)
    inputs = PeerInputs(data.train)
    peer = Peer(name, inputs)
    optimizer = torch.optim.Adam(peer.parameters(), lr=PEER_LR[name] if lr is None else lr)
    lengths = data.train.lengths_view()
    started = time.monotonic()
    epochs = []
    for epoch in range(1, settings.epochs + 1):
        peer.train()
        total, steps = 0.0, 0
        bar = progress_bar(list(length_buckets(lengths, settings.batch_size, rng)), desc=f"{name} epoch {epoch}",
                           unit="batch", show=progress, mininterval=2.0)
        for indices in bar:
            if len(indices) < 2:  # BatchNorm (GRU4Rec's MLP) and SASRec's squeeze need two rows
                continue
            samples = [data.train[i] for i in indices]
            loss = full_softmax_loss(peer.scores(samples).clamp(min=-1e9), inputs.labels(samples))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(peer.parameters(), CLIP_NORM)
            optimizer.step()
            total, steps = total + float(loss.detach()), steps + 1
        epochs.append({"epoch": epoch, "loss": total / max(steps, 1), "steps": steps})
        log.info("peer epoch done", extra={"peer": name, **epochs[-1]})
    train_s = time.monotonic() - started
    per_user = _score(peer, data.test)
    result = evaluation_result(out_dir, name, data, per_user, n_boot, seed)
    result["n_items_ranked"] = inputs.n_items - 2
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "run.json").write_text(json.dumps({
        "peer": name, **recipe(name, lr), "train_settings": asdict(settings),
        "train_s": round(train_s, 1), "loss_curve": epochs}, indent=2))
    (out_dir / "eval.json").write_text(json.dumps(result))
    return result


@torch.no_grad()
def _score(peer: Peer, test: SampleTable) -> dict[str, list[float]]:
    peer.eval()
    out: dict[str, list[float]] = {key: [] for key in metric_keys()}
    for start in range(0, len(test), EVAL_BATCH):
        samples = test[start:start + EVAL_BATCH]
        padded = samples + samples[:1] if len(samples) == 1 else samples  # see the training loop
        scores = peer.scores(padded)[: len(samples)]
        top = torch.topk(scores, min(max(CUTOFFS), scores.shape[1] - 2), dim=1).indices.tolist()
        for rows, sample in zip(top, samples):
            record_metrics(out, [peer.inputs.keys[r] for r in rows], [b.item.item_id for b in sample.labels])
    return out
