"""Single-sequence base encoders under the plug-in: SASRec, GRU4Rec and HSTU (the DSR of eq. 1).

SRU2B §3.3 models the unclicked sequence "as a plug-in module on basis of DSR" and picks SDM as the base
for its production setting; eqs. 3-9 read only the vector h the base makes. SDM lives in learner/model.py
(it reads the session and the long-term window apart, with the user profile); the bases here are the
usual single-sequence recommenders, and XDM puts the same plug-in on top of each (model.base).

What becomes of the long-term (7-day) window. Eq. 1 is h = DSR(S+_{u,t}, e_u), S+ being the user's clicked
sequence "sorted by interaction time" (§3.1), and SDM's long-term window is just the older part of it.
So a single-sequence base reads the long-term window followed by the session, oldest first, as one
sequence (`clicked_sequence`), of which it keeps the newest model.seq_max_len clicks, and h is its
output at the newest click. That is the history its torch-rechub twin reads (learner/peers.py: the
newest 50 of the same two windows), so a base and its peer differ in the model, not the input. The
cap is the usual one of these models (SASRec's n) and what keeps attention affordable: the default
windows hold up to 150 clicks, and reading them all SASRec trained at 0.15x SDM's samples/s on two
cores (a fifth of it dropout on the [B, H, L, L] weights), 0.48x with the newest 50
(bench/train_speed.py, a smoke run of 3 steps). The alternative, the base over the session
with the long-term pooled and gated as SDM does, would make every base a variant of SDM.

Items enter as SDM embeds them: q_i from learner.model.ItemEmbedding (the side info of set F), which the
model computes and passes in; the unclicked window and the labels are embedded the same way (eq. 3,
§3.3), so n, c and h share one input space on every base. The published models read no user features;
when profile fields are configured the model adds e_u to h (eq. 1's e_u).

Time: behaviours carry event times (stream.windows.Behavior.ts_ms, the first field of a stored window
row), but the Batch the model reads holds item ids only and serving passes the tower the same
arguments, so no timestamp reaches the model. HSTU's relative attention bias is therefore over
positions (bucketed log distances), not HSTU's time gaps; a time bias needs timestamps in Batch, in
collate and in the served tower's inputs.

Scale: the plug-in's margin m* and its gates were set on SDM's h, whose entries lie in [-1, 1] (tanh
layers mixed by a sigmoid gate), like n and c (tanh, eq. 3), and which starts near 0. A GRU's output
is already so bounded and starts small; the attention bases end in tanh(LayerNorm(.)) with the norm's
gain starting at OUTPUT_GAIN. Measured at Le 64 from the seeded init: |h|^2 0.02 (SDM), 0.4 (GRU4Rec),
0.6 (SASRec, HSTU), and the symmetric triplet 5.4-6.1 on every base; with the usual gain of 1, |h|^2
was 25 and the triplet 31, ten times eq. 9's cross-entropy, so λ would have meant something else on
those bases.

Padding is on the right and attention is causal, so a valid position never sees padding or later
clicks; an empty sequence gives h = 0.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from xdm.model_config import ModelConfig

EXACT_DISTANCES = 8  # HSTU's bias has one bucket per distance below this, then REL_PER_OCTAVE per doubling
REL_PER_OCTAVE = 4
REL_BUCKETS = 32  # covers distances up to 8 * 2^6 = 512 before the last bucket takes the rest
OUTPUT_GAIN = 0.1  # initial gain of the attention bases' last LayerNorm: h starts near 0, as SDM's does


def clicked_sequence(q_long: Tensor, long_len: Tensor, q_short: Tensor, short_len: Tensor,
                     max_len: int) -> tuple[Tensor, Tensor]:
    """The newest `max_len` clicks of the long-term window then the session, oldest first, as one
    right-padded sequence ([B, min(Ll + Ls, max_len), D], [B] lengths).

    Both windows are oldest first and the long-term one ends where the session starts, so the result is
    the user's clicks in time order. One gather and a constant slice, no Python loop nor Python
    arithmetic on sizes: the traced serving tower replays it at any width.
    """
    both = torch.cat([q_long, q_short], dim=1)
    positions = torch.arange(both.shape[1], device=both.device)[:max_len].unsqueeze(0)
    full = long_len + short_len
    length = full.clamp(max=max_len)
    valid = positions < length.unsqueeze(1)
    click = positions + (full - length).unsqueeze(1)  # index in the user's whole clicked sequence
    in_session = click - long_len.unsqueeze(1) + q_long.shape[1]  # session click k sits at Ll + k in `both`
    source = torch.where(click < long_len.unsqueeze(1), click, in_session)
    source = torch.where(valid, source, torch.zeros_like(source))  # padding reads row 0, then is zeroed
    sequence = both.gather(1, source.unsqueeze(-1).expand(-1, -1, both.shape[-1]))
    return sequence * valid.unsqueeze(-1).to(sequence.dtype), length


def newest_output(outputs: Tensor, length: Tensor) -> Tensor:
    """outputs[b, length[b] - 1] [B, D]; 0 for an empty sequence."""
    index = (length - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, outputs.shape[-1])
    return outputs.gather(1, index).squeeze(1) * (length > 0).unsqueeze(-1).to(outputs.dtype)


def output_norm(dim: int) -> nn.LayerNorm:
    """The attention bases' last LayerNorm, before tanh; its gain starts at OUTPUT_GAIN (see Scale above)."""
    norm = nn.LayerNorm(dim)
    nn.init.constant_(norm.weight, OUTPUT_GAIN)
    return norm


def _causal_mask(width: int, device: torch.device) -> Tensor:
    """[L, L] True where query i must not see key j (j after i)."""
    steps = torch.arange(width, device=device)
    return steps.unsqueeze(0) > steps.unsqueeze(1)


# -------------------------------------------------------------------------------------------- SASRec


class SASRecBlock(nn.Module):
    """Causal self-attention then a point-wise feed-forward, each residual (Kang & McAuley, ICDM 2018);
    layer norm before each, as nanoGPT."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm_attn = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, causal: Tensor) -> Tensor:
        y = self.norm_attn(x)
        x = x + self.drop(self.attn(y, y, y, attn_mask=causal, need_weights=False)[0])
        return x + self.drop(self.ffn(self.norm_ffn(x)))


class SASRec(nn.Module):
    """h = tanh(LayerNorm(the last block's output)) at the newest click; learned positions from the
    oldest click (RecBole's right-padded SASRec counts them so too)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.embed_dim
        self.positions = nn.Embedding(cfg.seq_max_len, d)
        nn.init.normal_(self.positions.weight, 0.0, cfg.init_std)  # the scale of the item rows, not N(0, 1)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(SASRecBlock(d, cfg.n_heads, cfg.dropout) for _ in range(cfg.seq_layers))
        self.norm = output_norm(d)

    def forward(self, q: Tensor, length: Tensor) -> Tensor:  # [B, L, D], [B] -> [B, D]
        steps = torch.arange(q.shape[1], device=q.device).clamp(max=self.positions.num_embeddings - 1)
        x = self.drop(q + self.positions(steps).unsqueeze(0))
        causal = _causal_mask(q.shape[1], q.device)
        for block in self.blocks:
            x = block(x, causal)
        return newest_output(torch.tanh(self.norm(x)), length)


# ------------------------------------------------------------------------------------------- GRU4Rec


class GRU4Rec(nn.Module):
    """h = a GRU's output at the newest click (Hidasi et al., ICLR 2016). A forward GRU's output at a valid
    step never reads the right padding, so nothing is packed."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.embed_dim
        self.gru = nn.GRU(d, d, num_layers=cfg.seq_layers, batch_first=True,
                          dropout=cfg.dropout if cfg.seq_layers > 1 else 0.0)

    def forward(self, q: Tensor, length: Tensor) -> Tensor:  # [B, L, D], [B] -> [B, D]
        outputs, _ = self.gru(q)
        return newest_output(outputs, length)


# ---------------------------------------------------------------------------------------------- HSTU


class RelativePositionBias(nn.Module):
    """rab of HSTU's eq. 2, per head, over log-bucketed distances i - j (positions: see the module docstring)."""

    def __init__(self, heads: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(heads, REL_BUCKETS))

    def forward(self, width: int, device: torch.device) -> Tensor:  # -> [H, L, L]
        steps = torch.arange(width, device=device)
        distance = (steps.unsqueeze(1) - steps.unsqueeze(0)).clamp(min=0)
        far = EXACT_DISTANCES + (torch.log2(distance.clamp(min=1).float() / EXACT_DISTANCES) * REL_PER_OCTAVE).long()
        bucket = torch.where(distance < EXACT_DISTANCES, distance, far).clamp(max=REL_BUCKETS - 1)
        return self.bias[:, bucket]


class HSTUBlock(nn.Module):
    """One HSTU layer (Zhai et al., ICML 2024, "Actions speak louder than words", eqs. 1-3):
    U, V, Q, K = split(SiLU(f1(x))); A = SiLU(Q K^T + rab) / n, causal; y = f2(Norm(A V) ⊙ U); x + y.

    Pointwise aggregated attention: SiLU, not softmax, so a weight does not shrink because other clicks
    are there, and dividing by n keeps sums comparable across lengths. n is the number of clicks query i
    sees (i + 1), not the padded width nor the user's whole length: padding and later clicks change nothing.
    """

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm_in = nn.LayerNorm(dim)
        self.uvqk = nn.Linear(dim, 4 * dim)  # f1
        self.rab = RelativePositionBias(heads)
        self.norm_av = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, dim)  # f2
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, causal: Tensor) -> Tensor:
        b, width, d = x.shape
        u, v, q, k = F.silu(self.uvqk(self.norm_in(x))).chunk(4, dim=-1)  # eq. 1
        q, k, v = (t.view(b, width, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        scores = q @ k.transpose(-1, -2) + self.rab(width, x.device).unsqueeze(0)  # [B, H, L, L]
        seen = (torch.arange(width, device=x.device) + 1).to(x.dtype).view(1, 1, -1, 1)
        weights = F.silu(scores).masked_fill(causal, 0.0) / seen  # eq. 2
        av = (self.drop(weights) @ v).transpose(1, 2).reshape(b, width, d)
        return x + self.drop(self.out(self.norm_av(av) * u))  # eq. 3


class HSTU(nn.Module):
    """h = tanh(LayerNorm(the last layer's output)) at the newest click (the reference L2-normalises
    instead; see Scale in the module docstring). No absolute positions: the relative bias carries order."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.embed_dim
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(HSTUBlock(d, cfg.n_heads, cfg.dropout) for _ in range(cfg.seq_layers))
        self.norm = output_norm(d)

    def forward(self, q: Tensor, length: Tensor) -> Tensor:  # [B, L, D], [B] -> [B, D]
        x = self.drop(q)
        causal = _causal_mask(q.shape[1], q.device)
        for block in self.blocks:
            x = block(x, causal)
        return newest_output(torch.tanh(self.norm(x)), length)


SEQUENCE_BASES: dict[str, type[nn.Module]] = {"sasrec": SASRec, "gru4rec": GRU4Rec, "hstu": HSTU}


def sequence_base(cfg: ModelConfig) -> nn.Module:
    """The encoder of a single-sequence base: forward(q [B, L, D], length [B]) -> h [B, D]."""
    if cfg.base not in SEQUENCE_BASES:
        raise ValueError(f"model.base {cfg.base!r} is not a single-sequence base; choose {', '.join(SEQUENCE_BASES)}")
    return SEQUENCE_BASES[cfg.base](cfg)
