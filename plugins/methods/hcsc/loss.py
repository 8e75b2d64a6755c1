"""HCSC's selective losses as pure functions (Guo et al., CVPR 2022, Sec. 3.3, eqs. 4-8).

Inputs are L2-normalised; similarities, ``exp`` and ``log-sum-exp`` run in float32 even under
autocast. A boolean ``keep`` mask marks the negatives that selection kept.

Two semantics for an unselected negative:

* default (the paper's eqs. 5 and 7): it is left out of the softmax denominator (masked to -inf);
* ``reference_semantics=True`` (the authors' code): its logit is multiplied by 0, so it still adds
  ``exp(0) = 1`` to the denominator.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from plugins.losses import full_precision, no_autocast

__all__ = [
    "instance_keep_probability",
    "prototype_keep_probability",
    "prototype_parent_probs",
    "sample_keep",
    "selective_info_nce",
    "selective_info_nce_levels",
    "prototype_nce",
]


def instance_keep_probability(
    queue_probs: torch.Tensor, query_cluster: torch.Tensor
) -> torch.Tensor:
    """Probability that queue key j is a true negative of query i (eq. 4): ``1 - P[j, s(i)]``.

    Args:
        queue_probs: (K, C) softmax over prototypes of ``key . C / phi`` for every queue slot.
        query_cluster: (B,) prototype id of each query's sample.

    Returns:
        (B, K).
    """
    return 1.0 - queue_probs[:, query_cluster].T


def prototype_parent_probs(
    centroids: torch.Tensor, parent_centroids: torch.Tensor, parent_density: torch.Tensor
) -> torch.Tensor:
    """(C_l, C_{l+1}) ``softmax(C_l C_{l+1}^T / phi_{l+1})`` over parents (HCSC eq. 6), float32."""
    with no_autocast(centroids):
        return torch.softmax(
            full_precision(centroids)
            @ full_precision(parent_centroids).T
            / full_precision(parent_density),
            dim=1,
        )


def prototype_keep_probability(
    parent_probs: torch.Tensor, positive_parent: torch.Tensor
) -> torch.Tensor:
    """Probability that a level-l prototype is a true negative prototype of query i (eq. 6).

    ``1 - softmax(C_l C_{l+1}^T / phi_{l+1})[c, parent(s_l(i))]``.

    Args:
        parent_probs: (C_l, C_{l+1}) from :func:`prototype_parent_probs`.
        positive_parent: (B,) level-(l+1) parent of each query's level-l prototype.

    Returns:
        (B, C_l).
    """
    return 1.0 - parent_probs[:, positive_parent].T


def sample_keep(prob: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Bernoulli draw of the keep mask, same shape as ``prob`` (bool)."""
    return torch.bernoulli(prob.clamp(0, 1), generator=generator).bool()


def selective_info_nce(
    q: torch.Tensor,
    k: torch.Tensor,
    queue: torch.Tensor,
    temperature: float = 0.2,
    keep: torch.Tensor | None = None,
    reference_semantics: bool = False,
) -> torch.Tensor:
    """MoCo's InfoNCE with selected queue negatives (HCSC eq. 5; MoCo eq. 1 when ``keep`` is None).

    ``l_i = -log exp(q_i.k_i/T) / (exp(q_i.k_i/T) + sum_{j kept} exp(q_i.n_j/T))``; the positive is
    never subject to selection.

    Args:
        q: (B, D) normalised queries.
        k: (B, D) normalised positive keys.
        queue: (K, D) normalised negatives.
        temperature: T.
        keep: (B, K) bool, negatives kept for each query (None: all).
        reference_semantics: unselected logits become 0 instead of being removed.

    Returns:
        Scalar mean over queries.
    """
    with no_autocast(q):
        q, k, queue = (
            full_precision(q),
            full_precision(k).to(full_precision(q).dtype),
            full_precision(queue).to(full_precision(q).dtype),
        )
        pos = (q * k).sum(1, keepdim=True)
        neg = q @ queue.T
        if keep is not None:
            neg = neg * keep if reference_semantics else neg.masked_fill(~keep, float("-inf"))
        logits = torch.cat([pos, neg], 1) / temperature
        return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


def selective_info_nce_levels(
    q: torch.Tensor,
    k: torch.Tensor,
    queue: torch.Tensor,
    temperature: float,
    keeps: list[torch.Tensor | None],
    reference_semantics: bool = False,
) -> torch.Tensor:
    """``L_ins = sum_l selective_info_nce(q, k, queue, T, keeps[l])`` with the (B, K) similarity
    matrix computed once for all levels (same value as the sum, fewer matrix products)."""
    with no_autocast(q):
        q, k, queue = (
            full_precision(q),
            full_precision(k).to(full_precision(q).dtype),
            full_precision(queue).to(full_precision(q).dtype),
        )
        pos = (q * k).sum(1, keepdim=True)
        sim = q @ queue.T
        target = torch.zeros(len(q), dtype=torch.long, device=q.device)
        total = q.new_zeros(())
        for keep in keeps:
            neg = sim
            if keep is not None:
                neg = sim * keep if reference_semantics else sim.masked_fill(~keep, float("-inf"))
            total = total + F.cross_entropy(torch.cat([pos, neg], 1) / temperature, target)
        return total


def prototype_nce(
    q: torch.Tensor,
    centroids: torch.Tensor,
    density: torch.Tensor,
    positive: torch.Tensor,
    keep: torch.Tensor | None = None,
    reference_semantics: bool = False,
    top_id: int | None = None,
) -> torch.Tensor:
    """Prototypical contrast with selected negative prototypes at one level (HCSC eq. 7, PCL eq. 11).

    Query i's positive is its own prototype ``c_{s(i)}`` with temperature ``phi_{s(i)}``; its
    negatives are the prototypes that are no query's positive in the batch, each with its own phi.

    Args:
        q: (B, D) normalised queries.
        centroids: (C, D) normalised prototypes.
        density: (C,) concentration phi.
        positive: (B,) prototype id of each query.
        keep: (B, C) bool, negatives kept by prototype selection (None: all).
        reference_semantics: unselected negatives' logits become 0, and (the code's off-by-one)
            prototype ``top_id`` and above are never negatives.
        top_id: largest prototype id assigned in the data set (only with ``reference_semantics``).

    Returns:
        Scalar mean over queries.
    """
    with no_autocast(q):
        q, c = full_precision(q), full_precision(centroids).to(full_precision(q).dtype)
        logits = q @ c.T / density.to(q.dtype)
        pos = logits.gather(1, positive[:, None])
        candidate = torch.ones(c.shape[0], dtype=torch.bool, device=q.device)
        candidate[positive] = False
        if reference_semantics and top_id is not None:
            candidate[top_id:] = False
        candidate = candidate[None].expand_as(logits)
        if keep is not None and reference_semantics:
            logits = logits * keep
        elif keep is not None:
            candidate = candidate & keep
        neg = logits.masked_fill(~candidate, float("-inf"))
        full = torch.cat([pos, neg], 1)
        return F.cross_entropy(full, torch.zeros(len(q), dtype=torch.long, device=q.device))
