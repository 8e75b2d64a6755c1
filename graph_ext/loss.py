"""ARIEL's losses: the GRACE contrastive loss and the information regulariser.

Both are pure functions of projected node embeddings; similarities and ``exp`` run in float32 even
under autocast (``plugins.losses`` conventions).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from plugins.losses import full_precision, nt_xent

__all__ = ["grace_loss", "info_regularizer"]


def grace_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.4) -> torch.Tensor:
    """GRACE's node-level contrastive loss (Zhu et al., 2020, eq. 1-2; ARIEL eq. 2).

    For node ``i`` with cosine similarity ``s`` and temperature ``t``::

        l(u, v)_i = -log( e^{s(u_i, v_i)/t} / (sum_j e^{s(u_i, v_j)/t} + sum_{j != i} e^{s(u_i, u_j)/t}) )

    and the loss is ``mean_i (l(z1, z2)_i + l(z2, z1)_i) / 2``. That is exactly SimCLR's NT-Xent over
    the 2N anchors with the positive kept in the denominator, so it reuses
    :func:`plugins.losses.nt_xent` instead of restating the math.

    Args:
        z1: (N, D) projected embeddings of view 1 (normalised inside).
        z2: (N, D) projected embeddings of view 2; row ``i`` is node ``i``.
        temperature: t.

    Returns:
        Scalar loss.

    Examples:
        >>> z1, z2 = torch.randn(5, 8), torch.randn(5, 8)
        >>> loss = grace_loss(z1, z2, temperature=0.4)
    """
    return nt_xent(z1, z2, temperature=temperature, positive_in_denominator=True)


def _pair_sim(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    a, b = full_precision(a), full_precision(b)
    return torch.exp((F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(-1) / temperature)


def info_regularizer(
    z1: torch.Tensor, z2: torch.Tensor, z: torch.Tensor, temperature: float = 0.4
) -> torch.Tensor:
    """ARIEL's information regulariser (Feng et al., WWW 2022, Sec. 4.3, eq. 10).

    With ``sim(a, b)_i = exp(cos(a_i, b_i) / t)`` and ``z`` the clean graph's embedding, the views
    may not agree more with each other than each agrees with the clean graph::

        mean_i relu(2 sim(z1, z2)_i - sim(z1, z)_i - sim(z2, z)_i)

    The two anchor terms are detached so the regulariser only pulls the views apart.

    Args:
        z1, z2, z: (N, D) projected embeddings of view 1, view 2 and the clean graph.
        temperature: t.
    """
    if not (z1.shape == z2.shape == z.shape):
        raise ValueError(
            f"z1, z2, z must share a shape, got {tuple(z1.shape)}, {tuple(z2.shape)}, {tuple(z.shape)}"
        )
    with torch.autocast(device_type=z1.device.type, enabled=False):
        s12 = _pair_sim(z1, z2, temperature)
        s1 = _pair_sim(z1, z, temperature).detach()
        s2 = _pair_sim(z2, z, temperature).detach()
        return torch.relu(2 * s12 - s1 - s2).mean()
