"""SimCLR's plain-torch training loop: per-step progress, periodic checkpoints, exact resume."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from plugins.backbones import small_resnet
from plugins.checkpoint import Checkpointer, check_resumed_permutation
from plugins.data import (
    ImageTensorDataset,
    TwoViewAugment,
)
from plugins.errors import check_finite_loss
from plugins.evaluation import resolve_device
from plugins.methods.simclr.config import SimCLRConfig
from plugins.methods.simclr.model import SimCLR
from plugins.progress import progress_bar

__all__ = ["train_simclr"]


def train_simclr(
    dataset: ImageTensorDataset,
    config: SimCLRConfig | None = None,
    device: torch.device | str | None = None,
    seed: int = 0,
    progress: bool = True,
    augment: nn.Module | None = None,
    checkpointer: Checkpointer | None = None,
) -> tuple[SimCLR, list[float]]:
    """Train SimCLR on ``dataset.images`` (labels unused). Returns the model and per-step losses.

    ``checkpointer`` (:class:`plugins.checkpoint.Checkpointer`) saves the training state after
    optimisation steps and resumes from its ``--resume`` file: the resumed run ends with the same
    parameters as an uninterrupted one (CPU, same seed).
    """
    cfg = config or SimCLRConfig()
    device = resolve_device(device)
    torch.manual_seed(seed)
    images = dataset.images
    size = cfg.image_size or images.shape[-1]
    encoder, dim = small_resnet(images.shape[1], cfg.arch)
    model = SimCLR(encoder, dim, cfg).to(device)
    augment = augment or TwoViewAugment(size, scale=cfg.crop_scale)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = len(images)
    bs = min(cfg.batch_size, n)
    steps = max(1, n // bs)
    total = cfg.epochs * steps
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    losses: list[float] = []
    g = torch.Generator().manual_seed(seed)
    # the epoch's permutation, so that a run resumed in the middle of an epoch sees the same batches
    state: dict[str, Any] = {"perm": torch.empty(0, dtype=torch.long)}
    objects = dict(model=model, opt=opt, sched=sched, gen=g, losses=losses, state=state)
    start = checkpointer.restore(total, **objects) if checkpointer else 0
    check_resumed_permutation(state["perm"], n, start, steps, checkpointer)
    model.train()
    bar = progress_bar(total=total, initial=start, desc="simclr", show=progress)
    for step in range(start, total):
        epoch, s = divmod(step, steps)
        if s == 0:
            state["perm"] = torch.randperm(n, generator=g)
        x = images[state["perm"][s * bs : (s + 1) * bs]].to(device, non_blocking=True)
        x1, x2 = augment(x)
        loss = model(x1, x2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(check_finite_loss(loss.detach(), len(losses)))
        bar.update()
        bar.set_postfix(epoch=f"{epoch + 1}/{cfg.epochs}", loss=f"{losses[-1]:.3f}")
        if checkpointer:
            checkpointer.step(step + 1, **objects)
    bar.close()
    return model, losses
