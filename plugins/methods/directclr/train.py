"""Training DirectCLR in plain torch: LARS, warm-up + cosine schedule, the asymmetric augmentations
and a loop with collapse monitoring (:class:`plugins.monitoring.CollapseTracker`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from plugins.checkpoint import Checkpointer, check_resumed_permutation
from plugins.data import ImageTensorDataset, TwoViewAugment
from plugins.methods.directclr.model import DirectCLR, DirectCLRConfig
from plugins.monitoring import CollapseTracker
from plugins.progress import progress_bar

__all__ = ["LARS", "lr_at", "solarize", "AsymmetricAugment", "TrainResult", "train_directclr"]


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling (You, Gitman, Ginsburg 2017), SGD-momentum form used by
    Barlow Twins and DirectCLR: for weights with ``ndim > 1`` the update is
    ``g + wd * w`` scaled by ``eta * ||w|| / ||g + wd * w||``; biases and BatchNorm parameters
    (``ndim == 1``) get neither weight decay nor the adaptation."""

    def __init__(
        self,
        params,
        lr: float,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        eta: float = 0.001,
    ):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta))

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D401 - torch optimiser API
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if p.ndim > 1:
                    d = d.add(p, alpha=group["weight_decay"])
                    w_norm, d_norm = p.norm(), d.norm()
                    trust = torch.where(
                        (w_norm > 0) & (d_norm > 0),
                        group["eta"] * w_norm / d_norm,
                        torch.ones_like(w_norm),
                    )
                    d = d * trust
                buf = self.state[p].get("mu")
                if buf is None:
                    buf = self.state[p]["mu"] = torch.zeros_like(p)
                buf.mul_(group["momentum"]).add_(d)
                p.add_(buf, alpha=-group["lr"])
        return loss


def lr_at(step: int, total: int, peak: float, warmup_fraction: float) -> float:
    """Linear warm-up over ``warmup_fraction`` of the steps, then cosine decay to 0.1 % of the peak
    (the Barlow Twins / DirectCLR schedule)."""
    warm = max(1, int(total * warmup_fraction))
    if step < warm:
        return peak * (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    end = peak * 0.001
    return end + (peak - end) * 0.5 * (1 + math.cos(math.pi * t))


def solarize(x: torch.Tensor, p: float, threshold: float = 0.5) -> torch.Tensor:
    """Per-sample solarisation with probability ``p``: pixels above ``threshold`` become ``1 - x``."""
    if p <= 0:
        return x
    pick = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < p
    return torch.where(pick & (x >= threshold), 1 - x, x)


class AsymmetricAugment(nn.Module):
    """Barlow-Twins-style asymmetric views used by DirectCLR: both views crop, flip, colour-jitter
    (p=0.8) and grey (p=0.2); view 1 is always blurred, view 2 blurred with p=0.1 and solarised with
    p=0.2 (``DirectCLRConfig.blur_p`` / ``solarize_p``)."""

    def __init__(self, size: int, config: DirectCLRConfig | None = None):
        super().__init__()
        cfg = config or DirectCLRConfig()
        self.views = nn.ModuleList(
            TwoViewAugment(size, scale=cfg.crop_scale, p_blur=p) for p in cfg.blur_p
        )
        self.solarize_p = cfg.solarize_p

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v1, v2 = (solarize(aug.view(x), p) for aug, p in zip(self.views, self.solarize_p))
        return v1, v2


@dataclass
class TrainResult:
    model: DirectCLR
    losses: list[float]
    trackers: dict[str, CollapseTracker]
    classifier_acc: list[float]


def _optimizer(
    model: nn.Module, cfg: DirectCLRConfig, batch_size: int
) -> tuple[torch.optim.Optimizer, float]:
    if cfg.optimizer == "lars":
        peak = cfg.base_lr * batch_size / cfg.base_batch_size
        return LARS(
            model.parameters(), lr=peak, weight_decay=cfg.weight_decay, eta=cfg.lars_eta
        ), peak
    if cfg.optimizer == "adam":
        return torch.optim.Adam(
            model.parameters(), lr=cfg.adam_lr, weight_decay=cfg.weight_decay
        ), cfg.adam_lr
    raise ValueError(f"optimizer must be 'lars' or 'adam', got {cfg.optimizer!r}")


def train_directclr(
    model: DirectCLR,
    dataset: ImageTensorDataset,
    config: DirectCLRConfig | None = None,
    device: torch.device | str | None = None,
    seed: int = 0,
    progress: bool = True,
    probe: torch.Tensor | None = None,
    monitor_every: int = 50,
    augment: nn.Module | None = None,
    checkpointer: Checkpointer | None = None,
) -> TrainResult:
    """Train ``model`` on ``dataset.images`` (labels feed only the online classifier).

    ``probe`` (M, C, H, W) held-out images: their representation and embedding spectra are tracked
    every ``monitor_every`` steps (and at the end) with :class:`CollapseTracker`.
    ``checkpointer`` saves the training state (model, LARS/Adam state, generator, losses, collapse
    history) after optimisation steps and resumes from its ``--resume`` file to the same final
    parameters as an uninterrupted run.
    """
    cfg = config or model.config
    device = (
        torch.device(device)
        if device is not None
        else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    model.to(device)
    images, labels = dataset.images, dataset.labels
    augment = augment or AsymmetricAugment(images.shape[-1], cfg)
    n = len(images)
    bs = min(cfg.batch_size, n)
    steps_per_epoch = max(1, n // bs)
    total = cfg.epochs * steps_per_epoch
    opt, peak = _optimizer(model, cfg, bs)
    trackers = {on: CollapseTracker(monitor_every, on) for on in ("representation", "embedding")}
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    losses: list[float] = []
    accs: list[float] = []

    def check(step: int) -> None:
        if probe is None:
            return
        model.eval()
        with torch.no_grad():
            r = model.backbone(probe.to(device))
            trackers["representation"].update(step, r)
            trackers["embedding"].update(step, model.project(r))
        model.train()

    state: dict[str, Any] = {"perm": torch.empty(0, dtype=torch.long)}
    history: dict[str, Any] = {}
    objects = dict(model=model, opt=opt, gen=g, losses=losses, accs=accs, state=state)
    start = checkpointer.restore(total, **objects, trackers=history) if checkpointer else 0
    check_resumed_permutation(state["perm"], n, start, steps_per_epoch, checkpointer)
    if history:
        _load_trackers(trackers, history)
    if start == 0:
        check(0)
    model.train()
    bar = progress_bar(total=total, initial=start, desc=f"directclr[{model.mode}]", show=progress)
    for step in range(start, total):
        epoch, s = divmod(step, steps_per_epoch)
        if s == 0:
            state["perm"] = torch.randperm(n, generator=g)
        idx = state["perm"][s * bs : (s + 1) * bs]
        x = images[idx].to(device, non_blocking=True)
        x1, x2 = augment(x)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, total, peak, cfg.warmup_fraction)
        out = model(x1, x2, labels[idx].to(device) if model.classifier is not None else None)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        losses.append(float(out["contrastive_loss"].detach()))
        if "classifier_acc" in out:
            accs.append(float(out["classifier_acc"]))
        if trackers["representation"].due(step + 1):
            check(step + 1)
        bar.update()
        bar.set_postfix(epoch=f"{epoch + 1}/{cfg.epochs}", loss=f"{losses[-1]:.3f}")
        if checkpointer:
            checkpointer.step(step + 1, **objects, trackers=_tracker_state(trackers))
    bar.close()
    if trackers["representation"].last_step != total:
        check(total)
    return TrainResult(model, losses, trackers, accs)


def _tracker_state(trackers: dict[str, CollapseTracker]) -> dict[str, Any]:
    """The collapse histories as tensors and plain containers (safe to load with weights_only)."""
    return {
        on: {
            "history": [{k: float(v) for k, v in h.items()} for h in t.history],
            "spectra": {k: torch.from_numpy(np.asarray(v).copy()) for k, v in t.spectra.items()},
        }
        for on, t in trackers.items()
    }


def _load_trackers(trackers: dict[str, CollapseTracker], state: dict[str, Any]) -> None:
    for on, t in trackers.items():
        saved = state.get(on, {"history": [], "spectra": {}})
        t.history = [dict(h) for h in saved["history"]]
        t.spectra = {int(k): v.numpy() for k, v in saved["spectra"].items()}
