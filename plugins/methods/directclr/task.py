"""DirectCLR as a Lightning task (like torchgeo's ``BaseTask``s); the maths stays in
:class:`DirectCLR` / :func:`directclr_loss`, the optimiser and schedule in
:mod:`plugins.methods.directclr.train`.

``training_step`` takes a batch of images (uint8 or float, ``(B, C, H, W)``), a dict (``"image"``,
``"label"``) or a tuple ``(images, labels)``; labels feed only the online classifier. Views are drawn
on the batch's device (:class:`AsymmetricAugment`, or the ``augment`` module given). Under DDP the
InfoNCE contrasts every rank's samples (``gather_distributed``), while the online linear classifier
stays local and detached: it sees this rank's ``r.detach()`` and labels only, never reaches the
encoder, and DDP's gradient average makes its step the full-batch step. Use
``Trainer(sync_batchnorm=True)`` so that BatchNorm sees the global batch.

It returns ``{"loss", "representation", "embedding"}``, so :class:`plugins.monitoring.CollapseMonitor`
reads the features at no extra cost (or through :meth:`collapse_features` with a probe batch).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from plugins.backbones import TinyResNet, small_resnet
from plugins.data.stream import split_batch
from plugins.methods.directclr.model import DirectCLR, DirectCLRConfig
from plugins.methods.directclr.train import LARS, AsymmetricAugment, lr_at
from plugins.tasks import ContrastiveImageTask

__all__ = ["DirectCLRTask"]

_DEFAULTS = DirectCLRConfig()


class DirectCLRTask(ContrastiveImageTask):
    """DirectCLR (Jing et al., ICLR 2022) for ``lightning.Trainer``.

    Args:
        in_channels: image bands.
        arch: backbone, ``"tiny"`` or a torchvision ResNet name (:func:`plugins.backbones.small_resnet`).
        mode: one of :data:`plugins.methods.directclr.model.MODES`.
        d0: dims the loss sees (default :func:`default_d0` of the width).
        num_classes: adds the online linear classifier on ``r.detach()`` (when ``online_classifier``);
            batches must then carry labels.
        batch_size: the global batch size the LARS learning rate is scaled with
            (``base_lr * batch_size / base_batch_size``).
        image_size: side of the views (default: the input's).
        zero_init: zero-initialise the residual blocks' last BN scale (paper setting).
        widths: a :class:`TinyResNet` with these stage widths instead of ``arch``.
        augment: module ``images -> (view1, view2)``; default :class:`AsymmetricAugment`.
        gather_distributed: contrast against every rank's samples under DDP.
        The other arguments are the :class:`DirectCLRConfig` fields of the same names.
    """

    config_class = DirectCLRConfig

    def __init__(
        self,
        in_channels: int = 3,
        arch: str = "tiny",
        mode: str = "directclr",
        d0: int | None = None,
        num_classes: int | None = None,
        d0_fraction: float = _DEFAULTS.d0_fraction,
        temperature: float = _DEFAULTS.temperature,
        negatives: str = _DEFAULTS.negatives,
        projection_dim: int = _DEFAULTS.projection_dim,
        optimizer: str = _DEFAULTS.optimizer,
        base_lr: float = _DEFAULTS.base_lr,
        base_batch_size: int = _DEFAULTS.base_batch_size,
        adam_lr: float = _DEFAULTS.adam_lr,
        weight_decay: float = _DEFAULTS.weight_decay,
        lars_eta: float = _DEFAULTS.lars_eta,
        warmup_fraction: float = _DEFAULTS.warmup_fraction,
        batch_size: int = _DEFAULTS.batch_size,
        blur_p: tuple[float, float] = _DEFAULTS.blur_p,
        solarize_p: tuple[float, float] = _DEFAULTS.solarize_p,
        crop_scale: tuple[float, float] = _DEFAULTS.crop_scale,
        online_classifier: bool = _DEFAULTS.online_classifier,
        image_size: int | None = None,
        zero_init: bool = True,
        widths: tuple[int, ...] | None = None,
        augment: nn.Module | None = None,
        gather_distributed: bool = True,
    ):
        super().__init__(augment)
        if optimizer not in ("lars", "adam"):
            raise ValueError(f"optimizer must be 'lars' or 'adam', got {optimizer!r}")
        self.save_hyperparameters(ignore=["augment"])
        self.configure_models()

    def configure_models(self) -> None:
        """Backbone (:func:`small_resnet`) wrapped in :class:`DirectCLR`."""
        h = self.hparams
        if h.widths:
            backbone = TinyResNet(h.in_channels, widths=tuple(h.widths))
            dim = backbone.out_dim
        else:
            backbone, dim = small_resnet(h.in_channels, h.arch)
        self.model = DirectCLR(
            backbone,
            d0=h.d0,
            mode=h.mode,
            feat_dim=dim,
            num_classes=h.num_classes if h.online_classifier else None,
            config=self.config,
            zero_init=h.zero_init,
        )

    def make_augment(self, size: int) -> nn.Module:
        return AsymmetricAugment(size, self.config)

    # -- Lightning hooks --------------------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int = 0) -> dict[str, torch.Tensor]:
        x, labels = split_batch(batch)
        if self.model.classifier is not None and labels is None:
            raise ValueError(
                "DirectCLRTask(num_classes=...) trains an online classifier: batches must carry "
                "labels, e.g. (images, labels)"
            )
        x1, x2 = self.views(x)
        out = self.model(
            x1,
            x2,
            labels if self.model.classifier is not None else None,
            gather_distributed=self.gather(),
        )
        if self._trainer is not None:
            n = x.shape[0]
            self.log("train_loss", out["contrastive_loss"], prog_bar=True, batch_size=n)
            if "classifier_loss" in out:
                self.log("train_classifier_loss", out["classifier_loss"], batch_size=n)
                self.log("train_classifier_acc", out["classifier_acc"], batch_size=n)
        step = {
            "loss": out["loss"],
            "contrastive_loss": out["contrastive_loss"].detach(),
            "representation": out["representation"].detach(),
            "embedding": out["embedding"].detach(),
        }
        if "classifier_acc" in out:
            step["classifier_acc"] = out["classifier_acc"].detach()
        return step

    def collapse_features(self, batch: Any, on: str = "representation") -> torch.Tensor:
        """Hook for :class:`plugins.monitoring.CollapseMonitor`: r or z of the batch's images."""
        images, _ = split_batch(batch)
        return self.model.collapse_features(self.prepare(images), on=on)

    def configure_optimizers(self) -> dict[str, Any]:
        """LARS (paper; lr ``base_lr * batch_size / base_batch_size``) or Adam (``adam_lr``), with
        :func:`lr_at`'s warm-up + cosine schedule per step over the trainer's estimated steps, as
        :func:`plugins.methods.directclr.train.train_directclr`."""
        h = self.hparams
        if h.optimizer == "lars":
            peak = h.base_lr * h.batch_size / h.base_batch_size
            opt: torch.optim.Optimizer = LARS(
                self.parameters(), lr=peak, weight_decay=h.weight_decay, eta=h.lars_eta
            )
        else:
            peak = h.adam_lr
            opt = torch.optim.Adam(self.parameters(), lr=peak, weight_decay=h.weight_decay)
        total, warmup = self.total_steps(), h.warmup_fraction
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: lr_at(step, total, peak, warmup) / peak
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
