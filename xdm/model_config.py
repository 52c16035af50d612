"""The model's settings: the `model` section of the config, read by `learner/model.py`.

Plain data in the ground, as nanoGPT's train.py imports its model's config and never the other way round:
loading or checking a config must not load torch, so `xdm worker`, the simulator and every other command
that trains nothing start without it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

BASES = ("sdm", "sasrec", "gru4rec", "hstu")  # the DSR of eq. 1 under the plug-in (learner/bases.py)
FUSIONS = ("none", "simple", "confidence")
TRIPLETS = ("none", "asymmetric", "symmetric", "unclk_lab", "lab_clk", "unclk_clk")
TRIPLETS_WITH_N = frozenset({"asymmetric", "symmetric", "unclk_lab", "unclk_clk"})  # metric losses that involve n
TRIPLETS_WITH_C = frozenset({"asymmetric", "symmetric", "unclk_lab", "lab_clk"})  # ... and those that involve c
UNCLICKED_POOLS = ("mean", "attention")


@dataclass(frozen=True)
class ModelConfig:
    base: str = "sdm"  # DSR of eq. 1 that makes h: sdm (the papers'), sasrec, gru4rec or hstu (learner/bases.py)
    seq_layers: int = 2  # blocks of a sasrec or hstu base, GRU layers of a gru4rec base; sdm ignores it
    seq_max_len: int = 50  # newest clicks a sasrec, gru4rec or hstu base reads (the torch-rechub peers read 50)
    embed_dim: int = 64  # Le: size of every feature embedding, q_i, e_u, h, n, c, z (papers: 128)
    lstm_layers: int = 1  # depth of SDM's short-term LSTM
    n_heads: int = 4  # heads of SDM's multi-head self-attention; must divide embed_dim
    dropout: float = 0.1  # dropout on behaviour embeddings q_i and on self-attention weights (training)
    init_std: float = 0.05  # std of the normal init of embedding rows, initial and grown online
    profile_fields: str = ""  # comma-separated user profile field names (e_u inputs); "" = learned constant e_u
    use_unclicked: bool = True  # encode the unclicked window into n (eq. 3); False gives plain SDM
    fusion: str = "confidence"  # z from h and n: none (z = h), simple (eq. 6), confidence (eqs. 7-8)
    triplet: str = "symmetric"  # metric loss: none, asymmetric (eq. 4), symmetric (eq. 5), or a Table 3 pair
    share_label_encoder: bool = True  # c uses the same f as n ("embedded in the same way", §3.3)
    margin: float = 5.0  # m* of eq. 5; also m of eq. 4 and the hinge of the Table 3 pair losses
    # λ of eq. 9, weight of the metric loss against the cross-entropy. The papers' 10 was chosen on their
    # data; on the default simulated world `xdm tune` picks 0.3 on the validation split (README, Table 2).
    triplet_weight: float = 0.3
    triplet_warmup_steps: int = 0  # λ ramps linearly from 0 over this many optimiser steps (0 = full λ at once)
    # Added to the confidence gate's initial bias b (eq. 7). At 0 (PyTorch's init) G starts near 0.5, so z
    # starts as h minus half of an untrained n; a negative shift starts z near h, SDM's user vector.
    gate_bias_shift: float = 0.0
    # Beyond the papers. 0: eq. 8 as written. > 0: a learned scalar a, starting at this value, scales the
    # unclicked term, z = h - a · G ⊙ n (eq. 6: h - a · n): on bases whose h is tanh-bounded, eq. 8 moved h
    # by ~2/3 of its length (bench/fusion_scale.py), so the plug-in can start as a small correction of h and
    # grow only as far as the cross-entropy pays for it. Measured on one world's validation days, it did not
    # rescue HSTU (bench/results/plugin28/switches/exposure-follows-clicks/fusion-gain/): off by default.
    learned_fusion_gain: float = 0.0
    tie_item_embeddings: bool = False  # v_i (eq. 2) IS the item-id input embedding: n, c and z share one space
    n_negatives: int = 1000  # j, log-uniform negatives per batch for the sampled softmax (papers: 20000)
    remove_accidental_hits: bool = True  # drop sampled negatives equal to one of the user's labels
    # Beyond the papers. The sample's own unclicked items join eq. 9's negatives (label items excepted):
    # shown and skipped is a harder negative than a log-uniform draw. Reads the window in the loss only,
    # so it also applies to rows without the plug-in when set.
    unclicked_negatives: bool = False
    unclicked_pool: str = "mean"  # eq. 3's average of q_i (mean), or attention with h as the query (attention)

    def __post_init__(self) -> None:
        if self.base not in BASES:
            raise ValueError(f"model.base must be one of {', '.join(BASES)}; got {self.base!r}")
        if self.unclicked_pool not in UNCLICKED_POOLS:
            raise ValueError(f"model.unclicked_pool must be one of {', '.join(UNCLICKED_POOLS)}; "
                             f"got {self.unclicked_pool!r}")
        if self.seq_layers < 1 or self.seq_max_len < 1:
            raise ValueError(f"model.seq_layers and model.seq_max_len must be at least 1; "
                             f"got {self.seq_layers} and {self.seq_max_len}")
        if self.fusion not in FUSIONS:
            raise ValueError(f"model.fusion must be one of {', '.join(FUSIONS)}; got {self.fusion!r}")
        if self.triplet not in TRIPLETS:
            raise ValueError(f"model.triplet must be one of {', '.join(TRIPLETS)}; got {self.triplet!r}")
        if not self.use_unclicked and (self.fusion != "none" or self.triplet in TRIPLETS_WITH_N):
            raise ValueError(
                f"fusion={self.fusion!r} / triplet={self.triplet!r} need n: set use_unclicked=True"
            )
        if self.learned_fusion_gain < 0:
            raise ValueError(f"model.learned_fusion_gain must be >= 0 (0 = off); got {self.learned_fusion_gain}")
        if self.triplet_warmup_steps < 0:
            raise ValueError(f"model.triplet_warmup_steps must be >= 0; got {self.triplet_warmup_steps}")
        if self.embed_dim < 1 or self.embed_dim % self.n_heads:
            raise ValueError(f"model.embed_dim ({self.embed_dim}) must be a positive multiple of n_heads")
        for name in self.profile_field_names:
            if not name.isidentifier():
                raise ValueError(f"profile field {name!r} must be an identifier (letters, digits, _)")

    @property
    def profile_field_names(self) -> tuple[str, ...]:
        return tuple(f.strip() for f in self.profile_fields.split(",") if f.strip())


# What a named variant decides (learner/model.py: VARIANTS); the config's values of these are not laid over it.
VARIANT_SWITCHES = frozenset({"base", "use_unclicked", "fusion", "triplet"})


def model_overrides(model: ModelConfig) -> dict[str, Any]:
    """The model settings a variant leaves to the config (sizes, margins, ...), for config_for(variant, **them)."""
    return {k: v for k, v in asdict(model).items() if k not in VARIANT_SWITCHES}
