"""ARIEL's adversarial view: projected gradient ascent on edge flips and features
(Feng et al., WWW 2022, Sec. 4.2, eq. 5-8; the edge attack is Xu et al.'s PGD topology attack,
IJCAI 2019, with its bisection projection).

The attack maximises the contrastive loss between the (fixed) view-1 embedding and the perturbed
clean subgraph while the encoder is frozen: gradients are taken only with respect to the flip
variables and the feature perturbation (``torch.autograd.grad``), so no parameter ``.grad`` is
touched and no ``requires_grad`` toggling is needed.

What each step computes is the paper's; how, avoids repeated work: view 1's embedding and its
z1-z1 logit block are computed once (:func:`graph_ext.loss.grace_loss_to_fixed`, the same loss and
gradient from half the logits), ``X W_1`` once (sparse when ``X`` is), the feature gradient is
``dL/d(XW_1 + delta W_1) @ W_1`` (the chain rule through the first linear layer), and the relaxed
adjacency is assembled from ``A + I`` and ``1 - 2A`` built once per attack.

The attack perturbs the structure it is given (``directed`` / weighted adjacency):

* undirected (the paper's setting): one flip variable per unordered pair (the upper triangle,
  ``n(n-1)/2``), applied to both ``A[i, j]`` and ``A[j, i]``, so the view stays symmetric; the
  budget counts undirected edges;
* directed: one flip variable per ordered pair ``i != j`` (``n(n-1)``), so adding or removing
  ``j -> i`` leaves ``i -> j`` as it was; the budget counts directed edges, and the relaxed view
  is normalised with the directed formula (:mod:`graph_ext.adjacency`);
* weighted: flipping an existing edge removes it with its weight, flipping an absent pair adds an
  edge of weight 1: ``A + S o C`` with ``C = 1 - A_bin - A`` off the diagonal (``A_bin`` the 0/1
  pattern), which is the paper's ``11^T - 2A - I`` when every weight is 1.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from graph_ext.adjacency import with_sparse_copy
from graph_ext.loss import fixed_view, grace_loss_to_fixed
from graph_ext.model import ARIEL

__all__ = [
    "AdversarialView",
    "flip_edges",
    "flip_pairs",
    "pgd_adversarial_view",
    "project_capped_simplex",
]


class AdversarialView(NamedTuple):
    """Result of :func:`pgd_adversarial_view`.

    Attributes:
        adj: (n, n) perturbed adjacency, not normalised, zero diagonal: kept edges keep their
            weight, added ones weigh 1; symmetric unless the attack was ``directed``.
        x: (n, F) perturbed features ``X + delta``.
        flip_probs: continuous flip variables S after the last projection, over
            :func:`flip_pairs` (the upper triangle, or every ordered pair when ``directed``).
        delta: (n, F) feature perturbation, ``|delta| <= feature_eps``.
    """

    adj: torch.Tensor
    x: torch.Tensor
    flip_probs: torch.Tensor
    delta: torch.Tensor


def project_capped_simplex(s: torch.Tensor, budget: float, iters: int = 32) -> torch.Tensor:
    """Euclidean projection onto ``{0 <= s <= 1, sum(s) <= budget}`` (Xu et al., IJCAI 2019, eq. 9).

    If clipping to [0, 1] already meets the budget that is the projection; otherwise the answer is
    ``clamp(s - mu, 0, 1)`` with ``mu`` the root of ``sum(clamp(s - mu, 0, 1)) = budget``, found by
    bisection. The bisection runs a fixed number of halvings with ``torch.where`` so that it never
    syncs with the host; the upper end is returned, so the sum never exceeds the budget and a second
    projection returns its input unchanged.

    Args:
        s: any shape; the constraint is on the sum of all entries.
        budget: the cap on the sum (>= 0).
        iters: halvings of the initial bracket ``[min(s) - 1, max(s)]``.

    Returns:
        Tensor shaped like ``s``.
    """
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    clipped = s.clamp(0.0, 1.0)
    if s.numel() == 0:
        return clipped
    lo, hi = s.min() - 1.0, s.max()  # sum(clamp(s - lo)) = numel >= budget, sum(clamp(s - hi)) = 0
    for _ in range(iters):
        mid = (lo + hi) / 2
        over = (s - mid).clamp_(0.0, 1.0).sum() > budget
        lo = torch.where(over, mid, lo)
        hi = torch.where(over, hi, mid)
    projected = (s - hi).clamp(0.0, 1.0)
    return torch.where(clipped.sum() > budget, projected, clipped)


def flip_pairs(n: int, directed: bool = False, device: torch.device | None = None) -> torch.Tensor:
    """(2, m) the node pairs with a flip variable: ``torch.triu_indices(n, n, 1)`` (m = n(n-1)/2),
    or every ordered pair ``i != j`` in row-major order when ``directed`` (m = n(n-1))."""
    if not directed:
        return torch.triu_indices(n, n, 1, device=device)
    rows, cols = torch.ones(n, n, dtype=torch.bool, device=device).fill_diagonal_(False).nonzero().T
    return torch.stack([rows, cols])


def _flip_complement(adj: torch.Tensor) -> torch.Tensor:
    """``C = 1 - A_bin - A``: +1 on absent pairs (add weight 1), ``-A`` on edges (remove them).
    Its diagonal is meaningless (S has none)."""
    return 1.0 - (adj != 0).to(adj.dtype) - adj


def flip_edges(
    adj: torch.Tensor, flips: torch.Tensor, pairs: torch.Tensor, directed: bool = False
) -> torch.Tensor:
    """``A + S o C`` (module docstring): S holds ``flips`` at ``pairs`` (:func:`flip_pairs`),
    mirrored to the lower triangle unless ``directed``; ``C = 11^T - 2A - I`` for a 0/1 ``A``.

    Args:
        adj: (n, n) non-negative adjacency with zero diagonal (symmetric unless ``directed``).
        flips: (m,) values in [0, 1] for the ``pairs`` (continuous or 0/1).
        pairs: (2, m) node pairs, e.g. ``torch.triu_indices(n, n, 1)``.
        directed: each ordered pair flips on its own.
    """
    n = adj.shape[0]
    s = torch.zeros(n, n, dtype=adj.dtype, device=adj.device).index_put(
        (pairs[0], pairs[1]), flips.to(adj.dtype)
    )
    if not directed:
        s = s + s.T
    return adj + s * _flip_complement(adj)


def _sample_within_budget(
    probs: torch.Tensor, budget: float, generator: torch.Generator | None
) -> torch.Tensor:
    """Bernoulli(S) flips; if a draw exceeds the budget, keep its ``budget`` most likely flips."""
    flips = torch.bernoulli(probs, generator=generator)
    k = int(math.floor(budget + 1e-6))
    if int(flips.sum()) > k:  # rare: E[sum] <= budget; one host sync per attack
        score = torch.where(flips > 0, probs, torch.full_like(probs, -1.0))
        keep = score.topk(k).indices
        flips = torch.zeros_like(flips).index_fill(0, keep, 1.0)
    return flips


def pgd_adversarial_view(
    model: ARIEL,
    view1: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
    graph: tuple[torch.Tensor, torch.Tensor],
    steps: int = 5,
    edge_budget: float = 0.0,
    alpha: float = 200.0,
    beta: float = 0.01,
    feature_eps: float = 0.04,
    temperature: float | None = None,
    generator: torch.Generator | None = None,
    x_sparse: torch.Tensor | None = None,
    directed: bool = False,
) -> AdversarialView:
    """Adversarial view of ``graph`` against ``view1`` by T steps of PGD (ARIEL, Sec. 4.2).

    Each step takes the gradient of ``grace_loss(z1, z_adv)`` (ARIEL Sec. 4.2) with respect to the
    continuous flip variables S and the feature perturbation delta, then (eq. 5-8)::

        S     <- Proj_{0<=S<=1, sum S<=budget}(S + alpha / sqrt(t + 1) * grad_S)
        delta <- clamp(delta + beta * sign(grad_delta), -feature_eps, feature_eps)

    and finally draws discrete flips from Bernoulli(S). ``z_adv`` is the model's embedding of
    ``(X + delta, D^-1/2 (A + I + S o (11^T - 2A - I)) D^-1/2)`` (weighted or directed graphs: the
    module docstring). The view-1 embedding and its
    z1-z1 logit block are computed once, not per step (they depend on neither S nor delta).

    Args:
        model: the ARIEL model (treated as frozen; its parameters get no gradient).
        view1: the (n, h) projected view-1 embedding (detached here), or ``(x1, adj1_normalised)``
            to compute it.
        graph: ``(adj, x)``: the clean subgraph's (n, n) adjacency (0/1 or non-negative weights,
            zero diagonal, symmetric unless ``directed``) and its (n, F) dense features.
        steps: T.
        edge_budget: maximum number of flipped node pairs (ARIEL: 20% of the undirected edges;
            directed: of the directed edges).
        alpha: edge step size.
        beta: feature step size.
        feature_eps: L-infinity bound on delta.
        temperature: loss temperature (default: ``model.config.temperature``).
        generator: RNG for the Bernoulli draw.
        x_sparse: optional sparse (CSR/COO) copy of ``x``; ``X W_1`` is then a sparse product.
        directed: one flip variable per ordered pair and the directed normalisation.

    Returns:
        :class:`AdversarialView` ``(adj, x, flip_probs, delta)``.
    """
    adj, x = graph
    n = adj.shape[0]
    if adj.shape != (n, n) or x.shape[0] != n:
        raise ValueError(
            f"graph must be (adj (n, n), x (n, F)), got {tuple(adj.shape)} and {tuple(x.shape)}"
        )
    temperature = model.config.temperature if temperature is None else temperature
    with torch.no_grad():
        z1 = view1 if isinstance(view1, torch.Tensor) else model.embed_projected(*view1)
        anchor = fixed_view(z1, temperature)
        weight = model.first_weight.detach()  # W_1 (2h, F)
        xw = model.first_linear(x if x_sparse is None else x_sparse)  # X W_1, constant
        eye = torch.eye(n, dtype=adj.dtype, device=adj.device)
        adj_loops = adj + eye  # A + I
        complement = _flip_complement(adj)  # 11^T - 2A - I off the diagonal for a 0/1 A
    pairs = flip_pairs(n, directed, adj.device)
    s = torch.zeros(pairs.shape[1], dtype=adj.dtype, device=adj.device)
    delta = torch.zeros_like(x)
    for t in range(steps):
        s.requires_grad_(True)
        with torch.no_grad():  # (X + delta) W_1; delta = 0 at the first step
            h0 = xw.detach() if t == 0 else torch.addmm(xw, delta, weight.T)
        h0.requires_grad_(True)
        flips = adj.new_zeros(n, n).index_put((pairs[0], pairs[1]), s)
        if not directed:
            flips = flips + flips.T
        relaxed = adj_loops + flips * complement  # A + I + S o (11^T - 2A - I)
        d_in = relaxed.sum(1).rsqrt()  # >= 1 thanks to the self-loop
        d_out = relaxed.sum(0).rsqrt() if directed else d_in
        adj_p = with_sparse_copy(d_in[:, None] * relaxed * d_out[None, :])  # S mostly 0 after Proj
        loss = grace_loss_to_fixed(anchor, model.embed_projected_from_linear(h0, adj_p))
        grad_s, grad_h0 = torch.autograd.grad(loss, [s, h0])
        with torch.no_grad():
            grad_d = grad_h0 @ weight  # dL/d delta through h0 = (X + delta) W_1^T
            s = project_capped_simplex(s + alpha / math.sqrt(t + 1) * grad_s, edge_budget)
            delta = (delta + beta * grad_d.sign()).clamp(-feature_eps, feature_eps)
    s, delta = s.detach(), delta.detach()
    flips = _sample_within_budget(s, edge_budget, generator)
    return AdversarialView(flip_edges(adj, flips, pairs, directed), x + delta, s, delta)
