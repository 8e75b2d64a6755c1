"""Dataset condensation by gradient matching: DC (Zhao, Mopuri & Bilen, "Dataset Condensation with
Gradient Matching", ICLR 2021) and DCC (Lee, Chun, Jung, Yun & Yoon, "Dataset Condensation with
Contrastive Signals", ICML 2022), with DSA augmentation (Zhao & Bilen, ICML 2021).

``condense`` learns ``ipc`` images per class. Every outer iteration draws a fresh ConvNet; the inner
loop alternates (a) one SGD step on the synthetic images that makes the network's gradient on them
match its gradient on real images, and (b) a few epochs of training the network on the synthetic set.
DC matches class by class (:func:`dc_matching_loss`); DCC matches the all-class gradient
(:func:`dcc_matching_loss`) after a bi-level warm-up of DC steps (:func:`use_contrastive`).

Files: ``dcc_model`` (ConvNet), ``dcc_dsa`` (augmentation), ``dcc_match`` (distances, objectives,
schedules), ``dcc_eval`` (evaluation, NTK diagnostic), ``dcc_data`` (SyntheticSet), ``dcc_run``
(the ``contrastive-plugins`` functions).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from plugins.data import ImageTensorDataset, check_finite
from plugins.errors import UserInputError, check_finite_loss
from plugins.methods.dcc.config import DCCConfig
from plugins.methods.dcc.data import SyntheticSet, channel_stats, group_by_class
from plugins.methods.dcc.dsa import DSAConfig
from plugins.methods.dcc.dsa import dsa as dsa_augment
from plugins.methods.dcc.evaluate import (
    EvalConfig,
    empirical_ntk,
    evaluate_synthetic,
    kernel_distance,
    kernel_velocity,
)
from plugins.methods.dcc.match import (
    Autocast,
    dc_matching_loss,
    dcc_matching_loss,
    gradient_match_distance,
    logits,
    loops_for_ipc,
    use_contrastive,
)
from plugins.methods.dcc.model import ConvNet
from plugins.progress import progress_bar

if TYPE_CHECKING:
    from plugins.checkpoint import Checkpointer

__all__ = [
    "DCCConfig",
    "SyntheticSet",
    "ConvNet",
    "EvalConfig",
    "condense",
    "gradient_match_distance",
    "evaluate_synthetic",
    "empirical_ntk",
    "kernel_distance",
    "kernel_velocity",
    "loops_for_ipc",
    "use_contrastive",
]

METHODS = ("dcc", "dc", "random")


def _sample_real(groups: list[torch.Tensor], batch: int, gen: torch.Generator) -> torch.Tensor:
    """(K, B, C, H, W): B random distinct real images of every class (B = min(batch, smallest class))."""
    b = min(batch, min(len(g) for g in groups))
    # a loop over classes for index draws only; the images are gathered in one stack
    return torch.stack([g[torch.randperm(len(g), generator=gen)[:b].to(g.device)] for g in groups])


def _train_net_epochs(
    net: ConvNet,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int,
    batch: int,
    dsa_cfg: DSAConfig | None,
    gen: torch.Generator,
    autocast: Autocast = None,
) -> None:
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(batch):
            xb = x[idx]
            if dsa_cfg is not None:
                xb = dsa_augment(xb, dsa_cfg, gen)
            loss = F.cross_entropy(logits(net, xb, autocast), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


def condense(
    dataset: ImageTensorDataset,
    ipc: int,
    method: str = "dcc",
    dsa: bool = True,
    outer_iters: int = 1000,
    config: DCCConfig | None = None,
    device: torch.device | str | None = None,
    seed: int = 0,
    progress: bool = False,
    callback: Callable[[int, SyntheticSet], None] | None = None,
    checkpointer: Checkpointer | None = None,
    autocast: Autocast = None,
) -> SyntheticSet:
    """Condense ``dataset`` into ``ipc`` images per class.

    Args:
        dataset: real images (N, C, H, W) in [0, 1] with labels; every class needs an image.
        ipc: images per class.
        method: ``"dcc"`` (contrastive, with warm-up), ``"dc"`` (class-wise) or ``"random"``
            (random real images: the selection baseline, no optimisation).
        dsa: use DSA augmentation (overrides ``config.dsa``).
        outer_iters: outer iterations, each with a fresh network (overrides ``config.outer_iters``).
        config: other settings (:class:`DCCConfig`).
        device: where to compute (default CUDA when available).
        callback: called as ``callback(outer_iter, synthetic)`` after every outer iteration.
        checkpointer: saves the loop state after each outer iteration when due and resumes from
            ``--resume`` (:class:`plugins.checkpoint.Checkpointer`; one step = one outer iteration).
            The state is the synthetic images, their optimiser, the generator, the loss history and
            the contrastive-step count; each outer iteration's fresh network is drawn from the global
            torch RNG, which the checkpoint holds too.
        autocast: a factory of the autocast context of every network forward pass (matching and
            network updates), e.g. ``lambda: plugins.engine_settings.autocast(ctx)`` for ``--precision
            bf16-mixed``; the losses and the matching distance stay float32, and so do the
            synthetic images, the networks' parameters and the optimisers. ``None``: float32.

    Returns:
        :class:`SyntheticSet` with images in the normalised space of ``dataset``.
    """
    if method not in METHODS:
        raise UserInputError(f"method must be one of {METHODS}, got {method!r}.")
    cfg = replace(config or DCCConfig(), dsa=dsa, outer_iters=outer_iters)
    inner, net_epochs = cfg.resolved_loops(ipc)
    if inner < 1:
        raise UserInputError(f"inner_loops must be at least 1, got {inner}.")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    check_finite(dataset.images, "condensation input images")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)

    k = dataset.num_classes
    mean, std = channel_stats(dataset.images)
    norm = (dataset.images - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    groups = [g.to(dev) for g in group_by_class(norm, dataset.labels, k)]
    c, h, w = norm.shape[1:]
    if h != w:
        raise UserInputError(f"images must be square for the ConvNet, got {h}x{w}.")

    if cfg.init == "real" or method == "random":
        # with replacement only when a class has fewer than ipc images
        syn = torch.stack(
            [
                g[torch.randperm(len(g), generator=gen)[:ipc].to(dev)]
                if len(g) >= ipc
                else g[torch.randint(len(g), (ipc,), generator=gen).to(dev)]
                for g in groups
            ]
        )
    elif cfg.init == "noise":
        syn = torch.randn(k, ipc, c, h, w, generator=gen).to(dev)
    else:
        raise UserInputError(f"init must be 'real' or 'noise', got {cfg.init!r}.")
    labels = torch.arange(k).repeat_interleave(ipc)
    result = SyntheticSet(
        syn.flatten(0, 1).detach(), labels.to(dev), mean, std, dataset.classes, method
    )
    if method == "random":
        return result

    # the images as a module parameter, so that a checkpoint restores them in place
    state = torch.nn.ParameterDict({"images": torch.nn.Parameter(syn.clone())})
    syn = state["images"]
    opt_img = torch.optim.SGD([syn], lr=cfg.lr_img, momentum=cfg.momentum_img)
    dsa_cfg = DSAConfig() if cfg.dsa else None
    warm_outer = cfg.resolved_warmup_outer()
    y_syn = labels.to(dev)
    counts = {"contrastive_steps": 0}
    loop_state = dict(images=state, opt_img=opt_img, gen=gen, losses=result.losses, counts=counts)
    start = checkpointer.restore(cfg.outer_iters, **loop_state) if checkpointer else 0
    result.contrastive_steps = counts["contrastive_steps"]
    if start:
        result.images = syn.detach().flatten(0, 1).clone()
    bar = progress_bar(
        total=cfg.outer_iters * inner, initial=start * inner, desc=f"condense {method}",
        show=progress, unit="img step",
    )  # fmt: skip
    for it in range(start, cfg.outer_iters):
        net = ConvNet(c, k, h, cfg.width, cfg.depth).to(dev).train()
        opt_net = torch.optim.SGD(net.parameters(), lr=cfg.lr_net)
        total = 0.0
        for ol in range(inner):
            real = _sample_real(groups, cfg.batch_real, gen)
            contrastive = method == "dcc" and use_contrastive(it, ol, warm_outer, cfg.warmup_inner)
            objective = dcc_matching_loss if contrastive else dc_matching_loss
            loss = objective(net, real, syn, dsa_cfg, gen, autocast=autocast)
            opt_img.zero_grad(set_to_none=True)
            loss.backward()
            opt_img.step()
            value = check_finite_loss(loss.detach(), it * inner + ol)
            total += value
            counts["contrastive_steps"] += int(contrastive)
            bar.update()
            bar.set_postfix(outer=it + 1, loss=f"{value:.3g}", refresh=False)
            if ol == inner - 1:
                break  # the last image update needs no further network training
            _train_net_epochs(
                net, opt_net, syn.detach().flatten(0, 1), y_syn, net_epochs,
                cfg.batch_train, dsa_cfg, gen, autocast,
            )  # fmt: skip
        result.losses.append(total / inner)
        result.contrastive_steps = counts["contrastive_steps"]
        result.images = syn.detach().flatten(0, 1).clone()
        if checkpointer:
            checkpointer.step(it + 1, **loop_state)
        if callback is not None:
            callback(it, result)
    bar.close()
    return result
