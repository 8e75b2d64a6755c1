"""GLCNet as a torchgeo task: ``torchgeo fit --config torchgeo_ext/configs/glcnet_*.yaml``."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.optim import Adam
from torch.optim.lr_scheduler import CosineAnnealingLR
from torchgeo.trainers import BaseTask

from plugins.metrics import effective_rank
from torchgeo_ext.config import PAPER
from torchgeo_ext.loss import glcnet_loss
from torchgeo_ext.model import GLCNetModel
from torchgeo_ext.sampling import GLCNetViews, match_windows


class GLCNetTask(BaseTask):
    """GLCNet: global style + local matching contrastive pretraining for dense segmentation.

    Li et al., "Global and Local Contrastive Self-Supervised Learning for Semantic Segmentation of
    HR Remote Sensing Images", IEEE TGRS 60, 2022. Batches are torchgeo sample dicts whose
    ``image`` is (B, C, H, W) in [0, 1]; labels are not used. Logs ``train_loss``,
    ``train_loss_global``, ``train_loss_local``, ``train_matched`` (fraction of window pairs found)
    and the effective rank of the global embedding (``train_effective_rank``). For the full
    collapse spectrum add ``plugins.monitoring.CollapseMonitor`` to the trainer's callbacks (the
    configs do): it reads :meth:`collapse_features`.

    Args:
        model: ``"deeplabv3+"`` (the paper's network).
        backbone: smp encoder (paper ``resnet50``; ``resnet18`` for CPU).
        weights: ``None``/``False`` random init, ``True`` ImageNet (downloads, only on request), or a
            path to a state dict / Lightning checkpoint whose encoder weights are loaded.
        in_channels: input bands (4 for Potsdam RGB+IR).
        patch_size: local window side in view pixels (paper: 16 at size 224).
        patch_num: matched window pairs per image (paper: 4).
        lam: weight of the global loss (paper: 0.5).
        temperature: NT-Xent temperature of both branches (paper: 0.5).
        positive_in_denominator: ``False`` = reference code's NT-Xent (default); ``True`` = SimCLR's.
        branches: ``"both"``, ``"global"`` or ``"local"`` (ablations).
        use_variance: style = mean + variance (paper) or mean only (``False``: "no style" ablation).
        lr, betas, weight_decay, min_lr: Adam and cosine schedule (paper / reference code).
        size: view side length (paper: 224).
        rgb_bands: red, green, blue band indices for the hue/saturation change, ``None`` if none.
        augmentations: replaces :class:`GLCNetViews` (must return ``(v1, v2, theta1, theta2)``).
        gather_distributed: under DDP (``trainer.strategy=ddp``), contrast every rank's images and
            windows, so the loss and gradient are those of one process on the global batch, as in
            the paper's single-GPU batch of 256. A no-op on one process. ``False`` contrasts within
            each rank's batch only.

    Warns:
        UserWarning: when a hyperparameter differs from the paper's value.
    """

    ignore = ("weights", "augmentations")
    monitor = "train_loss"

    def __init__(
        self,
        model: str = PAPER.model,
        backbone: str = PAPER.backbone,
        weights: str | bool | None = None,
        in_channels: int = PAPER.in_channels,
        patch_size: int = PAPER.patch_size,
        patch_num: int = PAPER.patch_num,
        lam: float = PAPER.lam,
        temperature: float = PAPER.temperature,
        positive_in_denominator: bool = PAPER.positive_in_denominator,
        branches: str = "both",
        use_variance: bool = True,
        lr: float = PAPER.lr,
        betas: Sequence[float] = PAPER.betas,
        weight_decay: float = PAPER.weight_decay,
        min_lr: float = PAPER.min_lr,
        size: int = PAPER.size,
        rgb_bands: Sequence[int] | None = (0, 1, 2),
        augmentations: nn.Module | None = None,
        gather_distributed: bool = True,
    ) -> None:
        self.weights = weights
        expected_patch = round(PAPER.patch_size * size / PAPER.size)
        for name, value, paper in [
            ("patch_size", patch_size, expected_patch),
            ("patch_num", patch_num, PAPER.patch_num),
            ("lam", lam, PAPER.lam),
            ("temperature", temperature, PAPER.temperature),
            ("positive_in_denominator", positive_in_denominator, PAPER.positive_in_denominator),
        ]:
            if value != paper:
                warnings.warn(
                    f"GLCNet: {name}={value!r} differs from the paper's {paper!r} (at size {size})",
                    stacklevel=2,
                )
        super().__init__()
        self.augmentations = augmentations or GLCNetViews(size=size, rgb_bands=rgb_bands)

    def configure_models(self) -> None:
        hp = self.hparams
        self.model = GLCNetModel(
            hp["model"],
            hp["backbone"],
            hp["in_channels"],
            weights=self.weights is True,
            use_variance=hp["use_variance"],
        )
        if isinstance(self.weights, str):
            from torchgeo_ext.export import check_bands, encoder_state_dict

            if not os.path.exists(self.weights):
                raise FileNotFoundError(f"weights file {self.weights} does not exist")
            enc = encoder_state_dict(self.weights)
            check_bands(enc, self.model.net.encoder, self.weights)
            self.model.net.encoder.load_state_dict(enc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Global projection (B, 64) of a batch of images."""
        return self.model(x)[0]

    def training_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        x = batch["image"]
        if x.shape[1] != self.hparams["in_channels"]:
            raise ValueError(
                f"GLCNetTask expects {self.hparams['in_channels']} bands, got image of shape {tuple(x.shape)}"
            )
        hp = self.hparams
        v1, v2, t1, t2 = self.augmentations(x)
        c1, c2, valid = match_windows(
            t1, t2, tuple(x.shape[-2:]), v1.shape[-1], hp["patch_size"], hp["patch_num"]
        )
        g1, l1 = self.model(v1, c1, hp["patch_size"])
        g2, l2 = self.model(v2, c2, hp["patch_size"])
        loss, lg, ll = glcnet_loss(
            g1,
            g2,
            l1.reshape(-1, l1.shape[-1]),
            l2.reshape(-1, l2.shape[-1]),
            hp["lam"],
            hp["temperature"],
            hp["positive_in_denominator"],
            hp["branches"],
            gather_distributed=hp["gather_distributed"],
            local_valid=valid.reshape(-1),
        )
        b = x.shape[0]
        self.log("train_loss", loss, batch_size=b, prog_bar=True)
        self.log("train_loss_global", lg, batch_size=b)
        self.log("train_loss_local", ll, batch_size=b)
        self.log("train_matched", valid.float().mean(), batch_size=b)
        with torch.no_grad():
            self.log("train_effective_rank", effective_rank(g1.detach().float()), batch_size=b)
        return loss

    def collapse_features(self, batch: Any, on: str = "representation") -> torch.Tensor:
        """Features for :class:`plugins.monitoring.CollapseMonitor`: the encoder's pooled deepest
        features (B, C) (``on="representation"``) or the global projection (B, 64) (``"embedding"``)."""
        x = batch["image"] if isinstance(batch, dict) else batch
        if on == "embedding":
            return self.model(x)[0]
        return self.model.net.encoder(x)[-1].mean(dim=(2, 3))

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """No-op (self-supervised)."""

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """No-op (self-supervised)."""

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """No-op (self-supervised)."""

    def configure_optimizers(self) -> Any:
        """Adam (betas 0.9/0.99, wd 1e-5) with a per-epoch cosine schedule to ``min_lr`` (paper)."""
        hp = self.hparams
        opt = Adam(
            self.parameters(),
            lr=hp["lr"],
            betas=tuple(hp["betas"]),
            weight_decay=hp["weight_decay"],
        )
        t_max = (
            self.trainer.max_epochs
            if self._trainer is not None and self.trainer.max_epochs
            else PAPER.max_epochs
        )
        sched = CosineAnnealingLR(opt, T_max=max(1, t_max), eta_min=hp["min_lr"])
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": self.monitor}}
