"""XDM (a.k.a. SRU2B): SDM plus unclicked behaviours, and every ablation of the papers as a switch.

Reading order follows the papers. SDM (Lv et al., CIKM 2019) is the base deep sequential recommender
(DSR, eq. 1): each behaviour i becomes q_i (its side-info embeddings concatenated and projected to Le);
the short-term session goes through an LSTM, multi-head self-attention and a user attention with the
profile embedding e_u -> s; long-term behaviours are attention-pooled per side-info kind with e_u and
passed through a dense layer -> p; a gate over (e_u, s, p) mixes them -> h. XDM adds the unclicked
window: n = f(mean q_i) (eq. 3), the labels' c embedded the same way, a fusion of h and n -> z (eq. 6, or
eqs. 7-8), and a metric loss among h, n, c (eq. 4 or eq. 5) next to the sampled softmax (eq. 9).
Recall is maximum inner product z·v_i against the item OUTPUT embeddings (eq. 2), a table separate
from the input embeddings.

SDM is one base of several (model.base): SASRec, GRU4Rec and HSTU (learner/bases.py) make h from the
clicked sequence instead, and the plug-in on top (n, c, the fusion, the metric loss, eq. 9) is the same
on every base. Two switches go beyond the papers: the sample's unclicked items as negatives of the
sampled softmax (unclicked_negatives), and n pooled by attention with h as the query (unclicked_pool).
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from learner import losses
from learner.bases import clicked_sequence, sequence_base
from learner.batch import ITEM_KINDS, Batch, profile_kind
from learner.sampler import LogUniformSampler
from xdm.model_config import BASES, TRIPLETS_WITH_C, ModelConfig

# Table 2 rows (§4.2) and Table 3 rows (§5.3.2). "w/o fusion+sym" keeps n for the asymmetric triplet
# but recommends with z = h; the Table 3 pair variants replace the triplet inside the full XDM.
ROWS: dict[str, dict[str, Any]] = {
    "sdm": {"use_unclicked": False, "fusion": "none", "triplet": "none"},
    "xdm_wo_conf_metric": {"use_unclicked": True, "fusion": "simple", "triplet": "none"},
    "xdm_wo_metric": {"use_unclicked": True, "fusion": "confidence", "triplet": "none"},
    "xdm_wo_fusion_sym": {"use_unclicked": True, "fusion": "none", "triplet": "asymmetric"},
    "xdm_wo_sym": {"use_unclicked": True, "fusion": "confidence", "triplet": "asymmetric"},
    "xdm": {"use_unclicked": True, "fusion": "confidence", "triplet": "symmetric"},
    "unclk_lab": {"use_unclicked": True, "fusion": "confidence", "triplet": "unclk_lab"},
    "lab_clk": {"use_unclicked": True, "fusion": "confidence", "triplet": "lab_clk"},
    "unclk_clk": {"use_unclicked": True, "fusion": "confidence", "triplet": "unclk_clk"},
}


def variant_name(row: str, base: str) -> str:
    """A row of ROWS on a base. On SDM the papers' names; on another base "sdm" is the base alone
    (sasrec), "xdm" the full plug-in on it (xdm-sasrec), any other row takes the base as a suffix
    (xdm_wo_metric-sasrec)."""
    if base == "sdm":
        return row
    if row == "sdm":
        return base
    if row == "xdm":
        return f"xdm-{base}"
    return f"{row}-{base}"


# Every row on every base: the variant decides the base as it decides the switches.
VARIANTS: dict[str, dict[str, Any]] = {
    variant_name(row, base): {"base": base, **switches} for base in BASES for row, switches in ROWS.items()
}


def config_for(name: str, **overrides: Any) -> ModelConfig:
    """The ModelConfig of a named variant; overrides (sizes, margins...) are applied on top."""
    if name not in VARIANTS:
        raise ValueError(f"unknown model variant {name!r}; choose one of {', '.join(VARIANTS)}")
    return ModelConfig(**{**VARIANTS[name], **overrides})


def pick_device(prefer: str = "auto") -> torch.device:
    """"auto": CUDA when present, else CPU; otherwise the named device, which must be available."""
    if prefer == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(prefer)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {prefer!r} requested but CUDA is not available; use 'auto' or 'cpu'")
    return device


class UserOutputs(NamedTuple):
    h: Tensor  # [B, D] SDM's sequential preference representation (eq. 1)
    n: Tensor | None  # [B, D] unclicked representation (eq. 3); None when use_unclicked is off
    c: Tensor | None  # [B, D] label representation; None when no metric loss needs it
    z: Tensor  # [B, D] final user vector used for recall (eq. 6 / eq. 8, or h)


class LossParts(NamedTuple):
    total: Tensor  # ce + λ · triplet (eq. 9)
    ce: Tensor  # sampled-softmax cross-entropy
    triplet: Tensor  # metric loss before λ (0 when triplet="none")


# --------------------------------------------------------------------------------------------- blocks


class FeatureEmbedding(nn.Module):
    """One input embedding table per kind (item, leaf, top, brand, shop, profile fields); row 0 = pad."""

    def __init__(self, sizes: Mapping[str, int], dim: int, init_std: float) -> None:
        super().__init__()
        self.init_std = init_std
        self.tables = nn.ModuleDict({kind: _embedding(rows, dim, init_std) for kind, rows in sizes.items()})

    def forward(self, kind: str, ids: Tensor) -> Tensor:
        return self.tables[kind](ids)

    def grow(self, kind: str, new_rows: int) -> None:
        """Append `new_rows` freshly initialised rows; existing rows (and their Parameter) are kept."""
        _grow_embedding(self.tables[kind], new_rows, self.init_std)


class ItemEmbedding(nn.Module):
    """q_i: a behaviour's side-info embeddings concatenated and projected to Le (SDM §3.3, set F)."""

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.proj = nn.Linear(len(ITEM_KINDS) * dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, features: FeatureEmbedding, ids: Tensor) -> Tensor:  # [..., 5] -> [..., D]
        feats = [features(kind, ids[..., i]) for i, kind in enumerate(ITEM_KINDS)]
        return self.drop(torch.tanh(self.proj(torch.cat(feats, dim=-1))))


class UserProfileEmbedding(nn.Module):
    """e_u: profile field embeddings concatenated and projected to Le (SDM's e_u, eq. 1)."""

    def __init__(self, fields: tuple[str, ...], dim: int, init_std: float) -> None:
        super().__init__()
        self.kinds = [profile_kind(f) for f in fields]
        self.proj = nn.Linear(len(fields) * dim, dim) if fields else None
        # Without profile fields every user shares one learned e_u: the attentions still get a query.
        self.constant = None if fields else nn.Parameter(torch.randn(dim) * init_std)

    def forward(self, features: FeatureEmbedding, profile: Tensor) -> Tensor:  # [B, P] -> [B, D]
        if self.proj is None:
            return self.constant.expand(profile.shape[0], -1)
        feats = [features(kind, profile[:, i]) for i, kind in enumerate(self.kinds)]
        return torch.tanh(self.proj(torch.cat(feats, dim=-1)))


class ShortTermEncoder(nn.Module):
    """SDM short-term interest s: LSTM over the session, multi-head self-attention, user attention."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.embed_dim
        self.lstm = nn.LSTM(d, d, num_layers=cfg.lstm_layers, batch_first=True)
        self.attn = nn.MultiheadAttention(d, cfg.n_heads, dropout=cfg.dropout, batch_first=True)

    def forward(self, q: Tensor, mask: Tensor, e_u: Tensor) -> Tensor:  # [B, L, D], [B, L], [B, D] -> [B, D]
        # Right padding: a forward LSTM's outputs at valid steps never see the padding, so no packing.
        x, _ = self.lstm(q)
        # An empty session would mask every key (NaN); let it attend to its padding, pooled away below.
        keys_ok = mask.clone()
        keys_ok[:, 0] = True
        x_hat, _ = self.attn(x, x, x, key_padding_mask=~keys_ok, need_weights=False)
        return attention_pool(x_hat, e_u, mask)  # user attention; 0 for an empty session


class LongTermEncoder(nn.Module):
    """SDM long-term interest p: per side-info kind, attention pooling with e_u; concat; tanh dense."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(len(ITEM_KINDS) * cfg.embed_dim, cfg.embed_dim)

    def forward(self, features: FeatureEmbedding, ids: Tensor, mask: Tensor, e_u: Tensor) -> Tensor:
        pooled = []
        for i, kind in enumerate(ITEM_KINDS):
            g = features(kind, ids[..., i])  # SDM's L^u_f: the kind-f embeddings of the long-term items
            pooled.append(attention_pool(g, e_u, mask & (ids[..., i] != 0)))  # unknown side-info is absent
        return torch.tanh(self.dense(torch.cat(pooled, dim=-1)))


class GatedFusion(nn.Module):
    """SDM gate: G = sigmoid(W[e_u; s; p] + b), h = (1 - G) ⊙ p + G ⊙ s."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gate = nn.Linear(3 * dim, dim)

    def forward(self, e_u: Tensor, s: Tensor, p: Tensor) -> Tensor:
        g = torch.sigmoid(self.gate(torch.cat([e_u, s, p], dim=-1)))
        return (1 - g) * p + g * s


class UnclickedEncoder(nn.Module):
    """Eq. 3: n = f(mean of q_i over the window), f a tanh feed-forward layer. Also encodes labels -> c.

    An empty window averages to the zero vector, so n = tanh(b): finite and the same for every such user.
    pool="attention" (beyond the papers, which leave "more complex neural structures" to future work)
    replaces the mean by SDM's user attention with h as the query: of 70 skipped items, those nearest
    what the user is after now weigh most, instead of the page's many items the user never considered.
    """

    def __init__(self, dim: int, pool: str = "mean") -> None:
        super().__init__()
        self.ffn = nn.Linear(dim, dim)
        self.pool = pool

    def forward(self, q: Tensor, mask: Tensor, query: Tensor | None = None) -> Tensor:  # [B, L, D], [B, L] -> [B, D]
        if self.pool == "attention":
            return torch.tanh(self.ffn(attention_pool(q, query, mask)))
        m = mask.unsqueeze(-1).to(q.dtype)
        mean = (q * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)
        return torch.tanh(self.ffn(mean))


class ConfidenceFusion(nn.Module):
    """Eqs. 7-8: G = sigmoid(W[h; n] + b) (sigmoid per §4.3), z = h - G ⊙ n."""

    def __init__(self, dim: int, bias_shift: float = 0.0) -> None:
        super().__init__()
        self.confidence = nn.Linear(2 * dim, dim)
        with torch.no_grad():
            self.confidence.bias += bias_shift

    def forward(self, h: Tensor, n: Tensor) -> Tensor:
        g = torch.sigmoid(self.confidence(torch.cat([h, n], dim=-1)))  # eq. 7
        return h - g * n  # eq. 8


# ------------------------------------------------------------------------------------------- the model


class XDM(nn.Module):
    """User tower (h, n, c, z) and item output embeddings; `sizes` gives each kind's initial rows."""

    def __init__(self, cfg: ModelConfig, sizes: Mapping[str, int] | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.embed_dim
        kinds = ITEM_KINDS + tuple(profile_kind(f) for f in cfg.profile_field_names)
        sizes = dict(sizes or {})
        unknown = set(sizes) - set(kinds)
        if unknown:
            raise ValueError(f"sizes name kinds the config does not have: {sorted(unknown)}; "
                             f"check model.profile_fields against the vocabulary")
        self.embed = FeatureEmbedding({k: max(1, sizes.get(k, 1)) for k in kinds}, d, cfg.init_std)
        # v_i of eq. 2; tied, the items the user clicked, skipped and will click live in the space z is
        # scored in, so subtracting n and the metric loss move z against the right items
        self.item_out = (self.embed.tables["item"] if cfg.tie_item_embeddings
                         else _embedding(max(1, sizes.get("item", 1)), d, cfg.init_std))
        self.q = ItemEmbedding(d, cfg.dropout)
        if cfg.base == "sdm":
            self.user = UserProfileEmbedding(cfg.profile_field_names, d, cfg.init_std)
            self.short_term = ShortTermEncoder(cfg)
            self.long_term = LongTermEncoder(cfg)
            self.gated = GatedFusion(d)
            self.sequence = None
        else:  # one clicked sequence, e_u only when profile fields are configured (learner/bases.py)
            self.user = (UserProfileEmbedding(cfg.profile_field_names, d, cfg.init_std)
                         if cfg.profile_field_names else None)
            self.short_term = self.long_term = self.gated = None
            self.sequence = sequence_base(cfg)
        self.unclicked = UnclickedEncoder(d, cfg.unclicked_pool) if cfg.use_unclicked else None
        needs_c = cfg.triplet in TRIPLETS_WITH_C
        # c is "embedded in the same way" as n (§3.3); sharing f puts n and c in one space by
        # construction, so the metric loss can only be met through the item embeddings (unclicked items
        # vs. label items), not by two independent tanh layers drifting their biases m* apart.
        shared = cfg.share_label_encoder and self.unclicked is not None
        self.label_encoder = UnclickedEncoder(d, cfg.unclicked_pool) if needs_c and not shared else None
        self._needs_c = needs_c
        self.confidence = ConfidenceFusion(d, cfg.gate_bias_shift) if cfg.fusion == "confidence" else None
        gain = cfg.learned_fusion_gain if cfg.fusion != "none" else 0.0
        self.fusion_gain = nn.Parameter(torch.tensor(float(gain))) if gain > 0 else None  # beyond the papers

    # --- towers

    def forward(self, batch: Batch) -> UserOutputs:
        h, n = self._h_and_n(batch, with_n=True)
        c = self._encode_labels(batch, h) if self._needs_c else None
        return UserOutputs(h=h, n=n, c=c, z=self._fuse(h, n))

    def user_vector(self, batch: Batch) -> Tensor:
        """z [B, D], the user tower used at serving; labels are not read."""
        q_unclicked = self.q(self.embed, batch.unclicked) if self.reads_unclicked else None
        return self.user_vector_from_q(self.q(self.embed, batch.short), batch.short_len, batch.long,
                                       batch.long_len, q_unclicked, batch.unclicked_len, batch.profile)

    def user_vector_from_q(self, q_short: Tensor, short_len: Tensor, long: Tensor, long_len: Tensor,
                           q_unclicked: Tensor | None, unclicked_len: Tensor, profile: Tensor) -> Tensor:
        """user_vector with the short-term and unclicked windows given as their q_i [B, L, D]. Serving
        keeps each item's q_i (at inference it depends on the item alone), so it passes them in;
        q_unclicked is read only when `reads_unclicked`."""
        h, n = self._h_and_n_from_q(q_short, short_len, long, long_len, q_unclicked, unclicked_len, profile,
                                    with_n=self.reads_unclicked)
        return self._fuse(h, n)

    @property
    def reads_unclicked(self) -> bool:
        """Whether z depends on the unclicked window (eqs. 6-8), not only the metric loss (eq. 4, z = h)."""
        return self.cfg.fusion != "none" and self.unclicked is not None

    def vocabulary_tables(self) -> list[nn.Embedding]:
        """The tables whose rows follow the vocabulary (every input kind and the item output table):
        the ones that grow with the catalogue, and of which a batch touches only a few rows."""
        tables = list(self.embed.tables.values())
        return tables if self.item_out is self.embed.tables["item"] else [*tables, self.item_out]

    def use_sparse_tables(self, min_rows: int | None) -> None:
        """Row-sparse gradients (only the rows a batch touched) for the vocabulary tables of more than
        `min_rows` rows, dense ones of the table's full size for the others (all of them when None).
        Switchable between steps: the optimiser state is the same either way."""
        for table in self.vocabulary_tables():
            table.sparse = min_rows is not None and table.num_embeddings > min_rows

    def item_vectors(self) -> Tensor:
        """Item output embeddings [n_items, D] (the live Parameter: detach to publish); row r is item
        vocabulary row r, row 0 (padding) is zero and must not be published."""
        return self.item_out.weight

    @property
    def n_items(self) -> int:
        return int(self.item_out.weight.shape[0])

    def full_sort_predict(self, batch: Batch) -> Tensor:
        """Scores z·v_i of every item row [B, n_items] (eq. 2); padding row 0 scores -inf."""
        scores = self.user_vector(batch) @ self.item_vectors().T
        scores[:, 0] = float("-inf")
        return scores

    # --- training

    def calculate_loss(
        self, batch: Batch, sampler: LogUniformSampler, generator: torch.Generator | None = None,
        step: int | None = None,
    ) -> LossParts:
        """Eq. 9: sampled-softmax cross-entropy of z against the labels, plus λ times the metric loss.

        `step` (optimiser steps taken so far) ramps λ in over `triplet_warmup_steps`; None means full λ.
        """
        cfg = self.cfg
        out = self.forward(batch)
        positives = batch.labels[..., 0]
        positive_mask = _length_mask(batch.label_len, positives.shape[1]) & (positives != 0)
        negatives, log_q_neg = sampler.sample(cfg.n_negatives, generator)
        negatives, log_q_neg = negatives.to(positives.device), log_q_neg.to(positives.device)
        own, own_mask = self._own_negatives(batch, positives, positive_mask) if cfg.unclicked_negatives else (None, None)
        ce = losses.sampled_softmax_loss(
            out.z, self.item_out.weight, None, positives, positive_mask, negatives,
            sampler.log_q(positives), log_q_neg, cfg.remove_accidental_hits,
            own, own_mask, sampler.log_q(own) if own is not None else None, sparse_grad=self.item_out.sparse,
        )
        triplet = self._metric_loss(out, batch)
        return LossParts(total=ce + self.triplet_weight_at(step) * triplet, ce=ce, triplet=triplet)

    def triplet_weight_at(self, step: int | None) -> float:
        """λ after `step` optimiser steps. From random weights h, n and c start nearly equal, and a full-λ
        pull of h towards c collapses all three onto one point, where every distance and its gradient is
        0 and the hinge stays at m* for good; letting the cross-entropy shape them first avoids that."""
        warmup = self.cfg.triplet_warmup_steps
        if step is None or warmup == 0:
            return self.cfg.triplet_weight
        return self.cfg.triplet_weight * min(1.0, (step + 1) / warmup)

    @staticmethod
    def _own_negatives(batch: Batch, positives: Tensor, positive_mask: Tensor) -> tuple[Tensor, Tensor]:
        """The sample's unclicked item rows [B, Lu] and which of them join its softmax: not padding, not an
        unknown item, not one of its labels (skipped then clicked later is a positive, not a dislike)."""
        rows = batch.unclicked[..., 0]
        is_label = ((rows.unsqueeze(-1) == positives.unsqueeze(1)) & positive_mask.unsqueeze(1)).any(dim=-1)
        return rows, _length_mask(batch.unclicked_len, rows.shape[1]) & (rows != 0) & ~is_label

    def _metric_loss(self, out: UserOutputs, batch: Batch) -> Tensor:
        cfg, kind = self.cfg, self.cfg.triplet
        if kind == "none":
            return out.z.new_zeros(())
        # A user takes part only if the inputs of its terms exist: an empty window carries no signal.
        has_n = batch.unclicked_len > 0
        has_c = batch.label_len > 0
        if kind == "asymmetric":
            return losses.triplet_asymmetric(out.h, out.n, out.c, cfg.margin, has_n & has_c)  # eq. 4
        if kind == "symmetric":
            return losses.triplet_symmetric(out.h, out.n, out.c, cfg.margin, has_n & has_c)  # eq. 5
        if kind == "unclk_lab":
            return losses.pair_unclk_lab(out.n, out.c, cfg.margin, has_n & has_c)
        if kind == "lab_clk":
            return losses.pair_lab_clk(out.h, out.c, has_c)
        return losses.pair_unclk_clk(out.h, out.n, cfg.margin, has_n)

    # --- growth and checkpoints

    def grow_to(self, sizes: Mapping[str, int]) -> bool:
        """Grow every table to at least `sizes` rows (the vocabulary's); True if anything grew.

        The Parameter objects are kept, so an optimiser still holds them, but per-parameter optimiser
        state (AdaGrad's sum) keeps the old shape and must be extended by the trainer.
        """
        grew = False
        for kind, rows in sizes.items():
            if kind not in self.embed.tables:
                raise ValueError(f"the model has no embedding table for kind {kind!r}")
            extra = rows - self.embed.tables[kind].num_embeddings
            if extra > 0:
                self.embed.grow(kind, extra)
                grew = True
        extra = sizes.get("item", 0) - self.n_items
        if extra > 0:
            _grow_embedding(self.item_out, extra, self.cfg.init_std)
            grew = True
        return grew

    @torch.no_grad()
    def reset_item_rows(self, rows: Sequence[int]) -> list[nn.Parameter]:
        """Re-initialise the input and output rows of recycled item rows (a new item took them over).

        Returns the parameters touched, so the trainer can reset their optimiser state at those rows.
        """
        if not rows:
            return []
        index = torch.as_tensor(list(rows), dtype=torch.long, device=self.item_out.weight.device)
        touched = list({id(w): w for w in (self.embed.tables["item"].weight, self.item_out.weight)}.values())
        for weight in touched:
            weight[index] = torch.empty(len(rows), weight.shape[1], device=weight.device).normal_(0.0, self.cfg.init_std)
        return touched

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """Like nn.Module's, but first grows the tables to the checkpoint's sizes (the vocabulary grew)."""
        sizes = {}
        for key, value in state_dict.items():
            if key.startswith("embed.tables.") and key.endswith(".weight"):
                sizes[key[len("embed.tables."):-len(".weight")]] = int(value.shape[0])
        if "item_out.weight" in state_dict:
            sizes["item"] = max(sizes.get("item", 0), int(state_dict["item_out.weight"].shape[0]))
        self.grow_to({k: v for k, v in sizes.items() if k in self.embed.tables})
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # --- internals

    def _h_and_n(self, batch: Batch, with_n: bool) -> tuple[Tensor, Tensor | None]:
        with_n = with_n and self.unclicked is not None
        q_unclicked = self.q(self.embed, batch.unclicked) if with_n else None
        return self._h_and_n_from_q(self.q(self.embed, batch.short), batch.short_len, batch.long, batch.long_len,
                                    q_unclicked, batch.unclicked_len, batch.profile, with_n)

    def _h_and_n_from_q(self, q_short: Tensor, short_len: Tensor, long: Tensor, long_len: Tensor,
                        q_unclicked: Tensor | None, unclicked_len: Tensor, profile: Tensor,
                        with_n: bool) -> tuple[Tensor, Tensor | None]:
        h = self._h_from_q(q_short, short_len, long, long_len, profile)
        n = None
        if with_n:
            n = self.unclicked(q_unclicked, _length_mask(unclicked_len, q_unclicked.shape[1]), h)  # eq. 3
        return h, n

    def _h_from_q(self, q_short: Tensor, short_len: Tensor, long: Tensor, long_len: Tensor, profile: Tensor) -> Tensor:
        """h of eq. 1 from the configured base."""
        if self.sequence is None:  # SDM: the session and the long-term window apart, then the gate
            e_u = self.user(self.embed, profile)
            s = self.short_term(q_short, _length_mask(short_len, q_short.shape[1]), e_u)
            p = self.long_term(self.embed, long, _length_mask(long_len, long.shape[1]), e_u)
            return self.gated(e_u, s, p)
        q_clicked, length = clicked_sequence(self.q(self.embed, long), long_len, q_short, short_len,
                                             self.cfg.seq_max_len)
        h = self.sequence(q_clicked, length)
        return h if self.user is None else h + self.user(self.embed, profile)

    def _encode_labels(self, batch: Batch, h: Tensor) -> Tensor:
        encoder = self.label_encoder if self.label_encoder is not None else self.unclicked
        mask = _length_mask(batch.label_len, batch.labels.shape[1])
        return encoder(self.q(self.embed, batch.labels), mask, h)  # c, embedded the same way as n (§3.3)

    def _fuse(self, h: Tensor, n: Tensor | None) -> Tensor:
        if self.cfg.fusion == "none":
            return h
        z = h - n if self.cfg.fusion == "simple" else self.confidence(h, n)  # eq. 6, or eqs. 7-8
        if self.fusion_gain is None:
            return z
        return h + self.fusion_gain * (z - h)  # model.learned_fusion_gain: h - a · G ⊙ n


def attention_pool(values: Tensor, query: Tensor, mask: Tensor) -> Tensor:
    """Σ_k softmax_k(values_k · query) values_k over valid k (SDM's user attention); 0 if none valid."""
    scores = (values * query.unsqueeze(1)).sum(-1)
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=-1) * mask.to(values.dtype)
    return (weights.unsqueeze(-1) * values).sum(dim=1)


def _length_mask(lengths: Tensor, width: int) -> Tensor:
    return torch.arange(width, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


def _embedding(rows: int, dim: int, init_std: float) -> nn.Embedding:
    emb = nn.Embedding(rows, dim, padding_idx=0)
    with torch.no_grad():
        emb.weight.normal_(0.0, init_std)
        emb.weight[0].zero_()
    return emb


def _grow_embedding(emb: nn.Embedding, new_rows: int, init_std: float) -> None:
    if new_rows < 0:
        raise ValueError(f"cannot shrink an embedding table (new_rows={new_rows})")
    if new_rows == 0:
        return
    old = emb.weight
    fresh = torch.empty(new_rows, old.shape[1], dtype=old.dtype, device=old.device).normal_(0.0, init_std)
    old.data = torch.cat([old.data, fresh], dim=0)  # same Parameter object: the optimiser keeps it
    if old.grad is not None and old.grad.is_sparse:  # the same rows, in a taller table
        old.grad = torch.sparse_coo_tensor(old.grad._indices(), old.grad._values(), old.shape)
    elif old.grad is not None:
        old.grad = torch.cat([old.grad, torch.zeros_like(fresh)], dim=0)
    emb.num_embeddings = old.shape[0]
