"""CLAWS's within-class NT-Xent: SimCLR's loss whose negatives come only from the anchor's weak class."""

from __future__ import annotations

import torch
from torch import nn

from plugins import distributed as D
from plugins.losses import _check_2d, _no_autocast, _normalize

__all__ = ["within_class_nt_xent", "WithinClassNTXentLoss"]


def within_class_nt_xent(
    z1: torch.Tensor,
    z2: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 0.5,
    gather_distributed: bool = False,
) -> torch.Tensor:
    """NT-Xent restricted to each anchor's weak class (Herrera-Gerena et al., 2021, Sec. 3;
    SimCLR eq. 1 with the sum over ``k`` cut to the anchor's class).

    For anchor ``i`` among the 2N views, positive ``p(i)`` (its other view) and weak labels ``y``::

        l_i = -s(i, p(i)) / t + log sum_{k != i, y_k = y_i} exp(s(i, k) / t)

    With one label for the whole batch this is :func:`plugins.losses.nt_xent`. An anchor whose class
    holds only itself in the batch has just its positive in the sum and adds exactly 0.

    Args:
        z1: (N, D) first view (L2-normalised inside).
        z2: (N, D) second view.
        labels: (N,) weak class of each sample.
        temperature: t (paper: 0.5).
        gather_distributed: other ranks' samples (and labels) join the columns, as in ``nt_xent``.

    Returns:
        Scalar mean of ``l_i`` over the (local) 2N anchors.
    """
    _check_2d("z1", z1)
    _check_2d("z2", z2)
    if z1.shape != z2.shape:
        raise ValueError(
            f"z1 and z2 must have the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    labels = labels.reshape(-1)
    n = z1.shape[0]
    if labels.shape[0] != n:
        raise ValueError(f"labels must have shape ({n},) to match z1, got {tuple(labels.shape)}")
    with _no_autocast(z1):
        local = torch.cat([_normalize(z1), _normalize(z2)])  # (2n, D): view-major
        if gather_distributed:
            # columns ordered as [all ranks' view 1, all ranks' view 2]
            cols = torch.cat([D.gather(local[:n]), D.gather(local[n:])])
            col_labels = D.gather_no_grad(labels)
            first = D.rank() * n
        else:
            cols, col_labels, first = local, labels, 0
        n_all = cols.shape[0] // 2
        sim = local @ cols.T / temperature  # (2n, 2n_all)
        sample = torch.arange(n, device=z1.device) + first
        own = torch.cat([sample, sample + n_all])  # each anchor's own column
        partner = torch.cat([sample + n_all, sample])  # its other view
        anchor_labels = labels.repeat(2)
        same_class = anchor_labels[:, None] == col_labels.repeat(2)[None, :]
        same_class[torch.arange(2 * n, device=z1.device), own] = False
        log_denominator = torch.logsumexp(sim.masked_fill(~same_class, float("-inf")), dim=1)
        positive = sim.gather(1, partner[:, None]).squeeze(1)
        return (log_denominator - positive).mean()


class WithinClassNTXentLoss(nn.Module):
    """Module form of :func:`within_class_nt_xent`. ``forward(z1, z2, labels)``."""

    def __init__(self, temperature: float = 0.5, gather_distributed: bool = False):
        super().__init__()
        self.temperature = temperature
        self.gather_distributed = gather_distributed

    def forward(self, z1: torch.Tensor, z2: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return within_class_nt_xent(z1, z2, labels, self.temperature, self.gather_distributed)
