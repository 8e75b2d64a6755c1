"""ARIEL's losses: the GRACE contrastive loss and the information regulariser.

Both are pure functions of projected node embeddings; similarities and ``exp`` run in float32 even
under autocast (``plugins.losses`` conventions).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from plugins.losses import full_precision, no_autocast, nt_xent

__all__ = ["FixedView", "fixed_view", "grace_loss", "grace_loss_to_fixed", "info_regularizer"]


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
    with no_autocast(z1):
        s12 = _pair_sim(z1, z2, temperature)
        s1 = _pair_sim(z1, z, temperature).detach()
        s2 = _pair_sim(z2, z, temperature).detach()
        return torch.relu(2 * s12 - s1 - s2).mean()


class FixedView(NamedTuple):
    """View 1 of :func:`grace_loss_to_fixed`, prepared once (it is constant during the attack).

    Attributes:
        z: (n, D) L2-normalised view-1 embedding (float32 or float64, no gradient).
        lse: (n,) ``logsumexp_{j != i} cos(z1_i, z1_j) / t``, the constant z1-z1 block of GRACE's
            denominators.
        temperature: t.
    """

    z: torch.Tensor
    lse: torch.Tensor
    temperature: float


def fixed_view(z1: torch.Tensor, temperature: float = 0.4) -> FixedView:
    """Precompute the parts of ``grace_loss(z1, .)`` that depend on ``z1`` alone (no gradient).

    Args:
        z1: (n, D) projected view-1 embedding; detached here.
        temperature: t.
    """
    _check_pair(z1, z1)
    with torch.no_grad(), no_autocast(z1):
        z = F.normalize(full_precision(z1.detach()), dim=-1)
        own = (z / temperature) @ z.T
        own.fill_diagonal_(float("-inf"))
        return FixedView(z, torch.logsumexp(own, dim=1), temperature)


def grace_loss_to_fixed(view: FixedView, z2: torch.Tensor) -> torch.Tensor:
    """``grace_loss(z1, z2)`` for a constant view 1, from 2 of its 4 logit blocks (ARIEL eq. 2).

    The PGD attack (Sec. 4.2) maximises ``L(z1, z_adv)`` over the adversarial view only, so the
    z1-z1 block of the (2n, 2n) logits is a constant (:func:`fixed_view` reduces it once to its
    row log-sum-exps) and the z_adv-z1 block is the transpose of the z1-z_adv block. With
    ``c = z2 z1^T / t`` and ``o = z2 z2^T / t`` (cosines, ``o_ii = -inf``)::

        L = ( sum_i log(e^{lse_i} + sum_j e^{c_ji}) + sum_i log(sum_j e^{o_ij} + sum_j e^{c_ij})
              - 2 sum_i c_ii ) / (2n)

    which is exactly :func:`grace_loss` (value and gradient with respect to ``z2``; tested against
    autograd of the full loss) at 4 (5 for n > 1,448) instead of 12 (n x n x D) matrix products,
    forward and backward together.

    Args:
        view: :func:`fixed_view` of z1.
        z2: (n, D) projected embedding of the attacked view.

    Returns:
        Scalar loss.
    """
    _check_pair(view.z, z2)
    t = view.temperature
    with no_autocast(z2):
        z2n = F.normalize(full_precision(z2), dim=-1)
        z1n = view.z.to(z2n.dtype)
        cross = (z2n / t) @ z1n.T  # cross[i, j] = cos(z2_i, z1_j) / t
        own = _SymmetricGram.apply(z2n, t)  # own[i, j] = cos(z2_i, z2_j) / t
        own.fill_diagonal_(float("-inf"))  # in place: the backward does not need the output
        lse1 = torch.logaddexp(view.lse.to(cross.dtype), torch.logsumexp(cross, dim=0))
        lse2 = torch.logsumexp(torch.cat([own, cross], dim=1), dim=1)
        positive = cross.diagonal()
        return (lse1.sum() + lse2.sum() - 2 * positive.sum()) / (2 * z2n.shape[0])


class _SymmetricGram(torch.autograd.Function):
    """``(z / t) z^T``; backward ``(g + g^T) z / t`` (one product instead of autograd's two)."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, t: float) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(z)
        ctx.t = t
        return (z / t) @ z.T

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        (z,) = ctx.saved_tensors
        if g.numel() > 2**21:  # large: a transposed add thrashes the cache, a 2nd product does not
            return torch.addmm(g @ z, g.T, z) / ctx.t, None
        return ((g + g.T) @ z) / ctx.t, None


def _check_pair(z1: torch.Tensor, z2: torch.Tensor) -> None:
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(
            f"z1 and z2 must both be (N, D), got {tuple(z1.shape)} and {tuple(z2.shape)}"
        )
