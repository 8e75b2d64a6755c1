"""GLCNet's objective (Li et al., TGRS 2022, eq. 4-8), built on :func:`plugins.losses.nt_xent`."""

from __future__ import annotations

import torch

from plugins.losses import nt_xent
from torchgeo_ext.config import PAPER

BRANCHES = ("both", "global", "local")


def glcnet_loss(
    g1: torch.Tensor,
    g2: torch.Tensor,
    l1: torch.Tensor,
    l2: torch.Tensor,
    lam: float = PAPER.lam,
    temperature: float = PAPER.temperature,
    positive_in_denominator: bool = PAPER.positive_in_denominator,
    branches: str = "both",
    gather_distributed: bool = False,
    local_valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``lam * L_global + (1 - lam) * L_local``, each an NT-Xent over its batch.

    Args:
        g1, g2: (B, D) global (style) projections of view 1 and 2.
        l1, l2: (M, D) local projections of the M matched windows of the batch; pair i is
            (l1[i], l2[i]); every other window of the batch, including those of the same image,
            is a negative.
        lam: global weight (paper: 0.5).
        temperature: NT-Xent temperature for both branches (paper: 0.5).
        positive_in_denominator: ``False`` (default) is the reference code's NT-Xent whose
            denominator holds only the negatives; ``True`` is SimCLR's eq. 1.
        branches: ``"both"``, ``"global"`` (global-only ablation) or ``"local"`` (local only).
        gather_distributed: contrast against every rank's images and windows (DDP); the gradient
            then equals the single-process gradient of the whole global batch.
        local_valid: optional (M,) bool; window pairs marked False (views that barely overlap) are
            left out of the local loss as anchors and as negatives. Passing all pairs with this mask
            (instead of dropping rows) keeps the shapes equal on every rank for the all-gather.

    Returns:
        ``(total, global_loss, local_loss)``; an unused branch is returned as 0.
    """
    if branches not in BRANCHES:
        raise ValueError(f"branches must be one of {BRANCHES}, got {branches!r}")
    kw = dict(
        temperature=temperature,
        positive_in_denominator=positive_in_denominator,
        gather_distributed=gather_distributed,
    )
    zero = g1.new_zeros((), dtype=torch.float32)
    lg = nt_xent(g1, g2, **kw) if branches != "local" else zero
    if branches == "global":
        return lg, lg, zero
    # a single local pair has no negative; with a mask (or across ranks) nt_xent decides that from
    # the valid pairs of every rank, and every rank must take part in its all-gather
    no_negatives = local_valid is None and not gather_distributed and l1.shape[0] < 2
    ll = zero if no_negatives else nt_xent(l1, l2, valid=local_valid, **kw)
    if branches == "local":
        return ll, lg, ll
    return lam * lg + (1 - lam) * ll, lg, ll
