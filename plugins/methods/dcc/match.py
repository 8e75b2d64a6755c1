"""Gradient matching for dataset condensation.

* :func:`gradient_match_distance`: the layer-wise distance of DC (Zhao et al., ICLR 2021, Eq. 10):
  each gradient is reshaped to (out, in*h*w) (linear layers stay (out, in)) and the rows are compared
  by ``1 - cos``; 1-D parameters (biases, norm affine) contribute nothing.
* :func:`dc_matching_loss`: DC's class-wise objective ``sum_c D(grad L(S_c), grad L(R_c))`` (Eq. 9).
* :func:`dcc_matching_loss`: DCC's contrastive objective (Lee et al., ICML 2022, Eq. 5): one distance
  between the gradient of the loss on ALL synthetic images and the class-averaged real gradient,
  so the synthetic set also has to carry the signals that tell classes apart.
* :func:`use_contrastive`: the bi-level warm-up rule (Lee et al., Sec. 4.3).
* :func:`loops_for_ipc`: the number of image updates and network epochs per outer iteration.
* :func:`logits`: a network's forward pass, under the run's autocast when one is given
  (``--precision bf16-mixed``), returned in float32: every loss and the matching distance of DCC
  compute in float32 on float32 gradients of the float32 parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

import torch
import torch.nn.functional as F
from torch import nn

from plugins.errors import UserInputError
from plugins.losses import full_precision, no_autocast
from plugins.methods.dcc.dsa import DSAConfig, DSAParams, apply_dsa, sample_dsa

_DEFAULT_DSA = DSAConfig()

#: a factory of the autocast context of the forward passes (``plugins.engine_settings.autocast``); ``None``:
#: plain float32
Autocast = Callable[[], AbstractContextManager] | None

__all__ = [
    "IPC_LOOPS",
    "Autocast",
    "logits",
    "gradient_match_distance",
    "loops_for_ipc",
    "use_contrastive",
    "real_class_mean_gradient",
    "real_class_mean_gradient_loop",
    "dc_matching_loss",
    "dcc_matching_loss",
]

# images per class -> (image updates per outer iteration, network epochs between them), from the issue's
# table (the DC/DCC reference settings).
IPC_LOOPS: dict[int, tuple[int, int]] = {
    1: (10, 5),
    10: (10, 50),
    20: (20, 25),
    30: (30, 20),
    40: (40, 15),
    50: (50, 10),
}


def loops_for_ipc(ipc: int) -> tuple[int, int]:
    """(inner image updates, network epochs) for ``ipc`` images per class.

    Tabulated values are returned as they are; any other ``ipc >= 1`` takes the entry of the nearest
    tabulated ipc (ties go to the smaller one), e.g. 5 -> the ipc-1 entry, 100 -> the ipc-50 entry.
    """
    if int(ipc) != ipc or ipc < 1:
        raise UserInputError(f"ipc (images per class) must be an integer >= 1, got {ipc}.")
    nearest = min(IPC_LOOPS, key=lambda k: (abs(k - ipc), k))
    return IPC_LOOPS[nearest]


def use_contrastive(
    outer_iter: int, inner_iter: int, warmup_outer: int = 250, warmup_inner: int = 10
) -> bool:
    """DCC's bi-level warm-up: the contrastive step once ``outer_iter >= warmup_outer`` or
    ``inner_iter >= warmup_inner`` (0-based counters), DC's class-wise step before."""
    return outer_iter >= warmup_outer or inner_iter >= warmup_inner


def logits(net: nn.Module, x: torch.Tensor, autocast: Autocast = None) -> torch.Tensor:
    """``net(x)``, the forward pass under ``autocast()`` when given (e.g. bfloat16 convolutions
    under ``--precision bf16-mixed``), upcast to float32 for the loss that follows outside it."""
    if autocast is None:
        return net(x)
    with autocast():
        out = net(x)
    return full_precision(out)


def _rows(g: torch.Tensor) -> torch.Tensor:
    return g.reshape(g.shape[0], -1)


def gradient_match_distance(
    g_syn: Sequence[torch.Tensor], g_real: Sequence[torch.Tensor], eps: float = 1e-6
) -> torch.Tensor:
    """Sum over layers and output rows of ``1 - cos(g_syn_row, g_real_row)`` (DC, Eq. 10).

    Args:
        g_syn, g_real: matching lists of per-parameter gradients, e.g. conv (out, in, h, w),
            linear (out, in), bias (out,).
        eps: added to the product of norms in the denominator (reference value 1e-6).

    Returns:
        scalar distance; 1-D tensors (biases, normalisation affine) contribute 0.
    """
    if len(g_syn) != len(g_real):
        raise ValueError(f"{len(g_syn)} synthetic gradients but {len(g_real)} real ones.")
    total = full_precision(g_syn[0].new_zeros(()))
    with no_autocast(total):  # float32 (float64 stays float64) even when called under autocast
        for gs, gr in zip(g_syn, g_real, strict=True):
            if gs.shape != gr.shape:
                raise ValueError(f"gradient shapes differ: {tuple(gs.shape)} vs {tuple(gr.shape)}.")
            if gs.ndim <= 1:
                continue
            s, r = full_precision(_rows(gs)), full_precision(_rows(gr))
            cos = (s * r).sum(-1) / (s.norm(dim=-1) * r.norm(dim=-1) + eps)
            total = total + (1.0 - cos).sum()
    return total


def _params(net: nn.Module) -> list[torch.Tensor]:
    return [p for p in net.parameters() if p.requires_grad]


def real_class_mean_gradient(
    net: nn.Module,
    real: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    autocast: Autocast = None,
) -> list[torch.Tensor]:
    """``(1/C) sum_c grad CE(net(R_c), c)`` in ONE forward/backward over the concatenated batches.

    Each sample's loss is weighted by ``1 / (C' * n_c)`` (``C'`` = classes present, ``n_c`` = its class's
    batch size), which equals the average of per-class mean losses; exact because the network
    normalises every sample on its own (instance norm), so no sample sees another.

    Args:
        real: (N, C, H, W) images of all classes, already augmented.
        labels: (N,) class of each image.
        autocast: the forward pass's autocast (:func:`logits`); the loss stays float32.
    """
    counts = torch.bincount(labels, minlength=num_classes).to(real.dtype)
    present = (counts > 0).sum()
    weight = 1.0 / (present * counts[labels])
    losses = F.cross_entropy(full_precision(logits(net, real, autocast)), labels, reduction="none")
    grads = torch.autograd.grad((losses * weight).sum(), _params(net))
    return [g.detach() for g in grads]


def real_class_mean_gradient_loop(
    net: nn.Module, real: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> list[torch.Tensor]:
    """The literal definition: one forward/backward per class, then the average (tests, benchmark)."""
    classes = [c for c in range(num_classes) if bool((labels == c).any())]
    total: list[torch.Tensor] | None = None
    for c in classes:
        idx = labels == c
        loss = F.cross_entropy(full_precision(net(real[idx])), labels[idx])
        grads = torch.autograd.grad(loss, _params(net))
        total = list(grads) if total is None else [t + g for t, g in zip(total, grads, strict=True)]
    assert total is not None
    return [t.detach() / len(classes) for t in total]


def _grouped(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(K, M, C, H, W) class-grouped batch -> (K*M, C, H, W) images and (K*M,) class index."""
    k, m = x.shape[:2]
    group = torch.arange(k, device=x.device).repeat_interleave(m)
    return x.reshape(k * m, *x.shape[2:]), group


def dc_matching_loss(
    net: nn.Module,
    real: torch.Tensor,
    syn: torch.Tensor,
    dsa: DSAConfig | None = _DEFAULT_DSA,
    generator: torch.Generator | None = None,
    autocast: Autocast = None,
) -> torch.Tensor:
    """DC's class-wise matching loss ``sum_c D(grad CE(net(S_c), c), grad CE(net(R_c), c))``.

    Args:
        real: (K, B, C, H, W) real batch per class.
        syn: (K, ipc, C, H, W) synthetic images (require grad).
        dsa: augmentation config (``None``: no augmentation); one op per class, the same parameters
            for that class's real and synthetic batch.
        autocast: the forward passes' autocast (:func:`logits`); losses and distance stay float32.
    """
    k = real.shape[0]
    params = _params(net)
    total = syn.new_zeros(())
    for c in range(k):  # the objective is a sum of per-class distances: one gradient per class
        xr, xs = real[c], syn[c]
        if dsa is not None:
            p = sample_dsa(1, xr.shape[-1], dsa, generator, device=xr.device)
            xr = apply_dsa(xr, p, xr.new_zeros(len(xr), dtype=torch.long), dsa)
            xs = apply_dsa(xs, p, xs.new_zeros(len(xs), dtype=torch.long), dsa)
        yr = torch.full((len(xr),), c, device=xr.device)
        ys = torch.full((len(xs),), c, device=xs.device)
        loss_r = F.cross_entropy(logits(net, xr, autocast), yr)
        gr = [g.detach() for g in torch.autograd.grad(loss_r, params)]
        loss_s = F.cross_entropy(logits(net, xs, autocast), ys)
        gs = torch.autograd.grad(loss_s, params, create_graph=True)
        total = total + gradient_match_distance(gs, gr)
    return total


def dcc_matching_loss(
    net: nn.Module,
    real: torch.Tensor,
    syn: torch.Tensor,
    dsa: DSAConfig | None = _DEFAULT_DSA,
    generator: torch.Generator | None = None,
    params: DSAParams | None = None,
    autocast: Autocast = None,
) -> torch.Tensor:
    """DCC's contrastive matching loss (Lee et al., ICML 2022, Eq. 5):
    ``D(grad CE(net(S_all), y_all), (1/K) sum_c grad CE(net(R_c), c))``.

    Same arguments as :func:`dc_matching_loss`; ``params`` fixes the augmentation (K groups) for tests.
    The real side is one forward/backward over all classes (:func:`real_class_mean_gradient`).
    """
    k = real.shape[0]
    xr, gr_idx = _grouped(real)
    xs, gs_idx = _grouped(syn)
    if dsa is not None:
        if params is None:
            params = sample_dsa(k, xr.shape[-1], dsa, generator, device=xr.device)
        xr, xs = apply_dsa(xr, params, gr_idx, dsa), apply_dsa(xs, params, gs_idx, dsa)
    g_real = real_class_mean_gradient(net, xr, gr_idx, k, autocast)
    loss_syn = F.cross_entropy(logits(net, xs, autocast), gs_idx)
    g_syn = torch.autograd.grad(loss_syn, _params(net), create_graph=True)
    return gradient_match_distance(g_syn, g_real)
