"""CLAWS's within-class NT-Xent: SimCLR's loss whose negatives come only from the anchor's weak class."""

from __future__ import annotations

import torch
from torch import nn

from plugins.losses import nt_xent

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
    labels = labels.reshape(-1)
    if labels.shape[0] != z1.shape[0]:
        raise ValueError(
            f"labels must have shape ({z1.shape[0]},) to match z1, got {tuple(labels.shape)}"
        )
    return nt_xent(z1, z2, temperature, gather_distributed=gather_distributed, labels=labels)


class WithinClassNTXentLoss(nn.Module):
    """Module form of :func:`within_class_nt_xent`. ``forward(z1, z2, labels)``."""

    def __init__(self, temperature: float = 0.5, gather_distributed: bool = False):
        super().__init__()
        self.temperature = temperature
        self.gather_distributed = gather_distributed

    def forward(self, z1: torch.Tensor, z2: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return within_class_nt_xent(z1, z2, labels, self.temperature, self.gather_distributed)
