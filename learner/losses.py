"""Losses of XDM / SRU2B (eqs. 4, 5, 9) and the pair losses of Table 3, as plain tensor functions.

Every loss is a batch MEAN over the examples that take part, not the papers' sum over users: the mean
keeps each term's scale independent of the batch size, so λ (triplet_weight) keeps the paper's meaning
of "triplet weight per example relative to cross-entropy per example" at any batch size. `mask` [B]
selects the examples that take part (for instance only users whose unclicked window is not empty); the
mean of an empty selection is 0, still attached to the graph.

Distances are squared Euclidean, d(a, b) = ||a - b||_2^2, as in eq. 4.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def sampled_softmax_loss(
    z: Tensor,
    item_out_weight: Tensor,
    item_out_bias: Tensor | None,
    positives: Tensor,
    positive_mask: Tensor,
    negatives: Tensor,
    log_q_pos: Tensor,
    log_q_neg: Tensor,
    remove_accidental_hits: bool = True,
    own_negatives: Tensor | None = None,
    own_negative_mask: Tensor | None = None,
    log_q_own: Tensor | None = None,
    sparse_grad: bool = False,
) -> Tensor:
    """CrossEntropy(C_ut, SampledSoftmax(z, C_ut, C-)) of eq. 9, averaged over each user's labels.

    z [B, D] user vectors; item_out_weight [N, D] (and optional bias [N]) the item output embeddings;
    positives [B, K] label rows with positive_mask [B, K]; negatives [j] rows shared by the batch, with
    log_q_pos [B, K] and log_q_neg [j] their log sampling probabilities.

    One softmax per user over its K positives and the j negatives, with logits z·v_i + b_i - log Q(i)
    (the log-Q correction makes the sampled softmax an unbiased stand-in for the full one). The target
    puts 1/K_b on each valid positive, so the loss is -(1/K_b) Σ_k log p(c_k), i.e. the cross-entropy
    averaged over the user's K_b labels (TensorFlow's sampled_softmax_loss with num_true = k). Padded
    positives and, with remove_accidental_hits, negatives equal to one of the user's positives are
    removed from that user's softmax. Users without labels do not count in the batch mean.

    own_negatives [B, U] (with own_negative_mask [B, U] and log_q_own [B, U]) are extra negatives of each
    user's own softmax, beyond the papers: the items it was shown and skipped. They take the same -log Q
    as a sampled item, so their logits are on the scale of the classes they compete with.

    sparse_grad: the gradient of item_out_weight holds only the rows gathered here (a sparse tensor), so
    its cost follows the batch and not the N rows of the table.
    """
    def rows(ids: Tensor) -> Tensor:
        return F.embedding(ids, item_out_weight, sparse=True) if sparse_grad else item_out_weight[ids]

    n_pos = positives.shape[1]
    w_pos = rows(positives)  # [B, K, D]
    pos_logits = (w_pos * z.unsqueeze(1)).sum(-1) - log_q_pos.to(z.dtype)
    neg_logits = z @ rows(negatives).T - log_q_neg.to(z.dtype).unsqueeze(0)  # [B, j]
    if item_out_bias is not None:
        pos_logits = pos_logits + item_out_bias[positives]
        neg_logits = neg_logits + item_out_bias[negatives].unsqueeze(0)
    pos_logits = pos_logits.masked_fill(~positive_mask, float("-inf"))
    if remove_accidental_hits:
        hits = (negatives.view(1, 1, -1) == positives.unsqueeze(-1)) & positive_mask.unsqueeze(-1)
        neg_logits = neg_logits.masked_fill(hits.any(dim=1), float("-inf"))
    logits = [pos_logits, neg_logits]
    if own_negatives is not None:
        own_logits = (rows(own_negatives) * z.unsqueeze(1)).sum(-1) - log_q_own.to(z.dtype)
        if item_out_bias is not None:
            own_logits = own_logits + item_out_bias[own_negatives]
        logits.append(own_logits.masked_fill(~own_negative_mask, float("-inf")))
    log_p = F.log_softmax(torch.cat(logits, dim=1), dim=1)[:, :n_pos]
    k_b = positive_mask.sum(dim=1)
    per_user = -torch.where(positive_mask, log_p, torch.zeros_like(log_p)).sum(dim=1) / k_b.clamp(min=1)
    return masked_mean(per_user, k_b > 0)


def triplet_asymmetric(h: Tensor, n: Tensor, c: Tensor, margin: float, mask: Tensor | None = None) -> Tensor:
    """Eq. 4: mean of [d(h, c) - d(h, n) + m]_+ : h near the labels c, at least m further from n."""
    return masked_mean(F.relu(sq_dist(h, c) - sq_dist(h, n) + margin), mask)


def triplet_symmetric(h: Tensor, n: Tensor, c: Tensor, margin: float, mask: Tensor | None = None) -> Tensor:
    """Eq. 5: mean of [2 d(h, c) - d(h, n) - d(c, n) + m*]_+ : also pushes n away from c (Figure 2)."""
    return masked_mean(F.relu(2 * sq_dist(h, c) - sq_dist(h, n) - sq_dist(c, n) + margin), mask)


def pair_lab_clk(h: Tensor, c: Tensor, mask: Tensor | None = None) -> Tensor:
    """Table 3 "lab&clk": minimise the label-clicked distance, mean of d(h, c). No margin: nothing to cap."""
    return masked_mean(sq_dist(h, c), mask)


def pair_unclk_lab(n: Tensor, c: Tensor, margin: float, mask: Tensor | None = None) -> Tensor:
    """Table 3 "unclk&lab": maximise the unclicked-label distance up to m, mean of [m - d(n, c)]_+.

    The hinge keeps the paper's "intermediate feedback" cap: once n is m away from c it is left alone
    (an unbounded maximisation would diverge).
    """
    return masked_mean(F.relu(margin - sq_dist(n, c)), mask)


def pair_unclk_clk(h: Tensor, n: Tensor, margin: float, mask: Tensor | None = None) -> Tensor:
    """Table 3 "unclk&clk": maximise the unclicked-clicked distance up to m, mean of [m - d(h, n)]_+."""
    return masked_mean(F.relu(margin - sq_dist(h, n)), mask)


def sq_dist(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise squared Euclidean distance ||a - b||_2^2 [B]."""
    return (a - b).pow(2).sum(dim=-1)


def masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of values[mask]; 0 (attached to the graph) when nothing is selected."""
    if mask is None:
        return values.mean()
    kept = torch.where(mask, values, torch.zeros_like(values))
    return kept.sum() / mask.sum().clamp(min=1).to(values.dtype)
