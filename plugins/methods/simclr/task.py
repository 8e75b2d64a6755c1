"""SimCLR as a Lightning task (like torchgeo's ``BaseTask``s): strategies, precision, checkpoints and
loggers come from the ``lightning.Trainer``; the maths stays in :class:`SimCLR` / ``nt_xent``.

::

    task = SimCLRTask(in_channels=3, arch="resnet18", temperature=0.5)
    Trainer(strategy="ddp", devices=2, precision="bf16-mixed").fit(task, loader)

``training_step`` takes a batch of images (uint8 or float, ``(B, C, H, W)``, or a dict / tuple whose
first item holds them), draws the two views on the batch's device (:class:`TwoViewAugment`, or the
``augment`` module given) and returns ``{"loss": ...}``. Under DDP the loss contrasts every rank's
samples (``gather_distributed``); use ``Trainer(sync_batchnorm=True)`` for SimCLR's global BN.
:class:`plugins.monitoring.CollapseMonitor` finds its features through :meth:`collapse_features`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from plugins.backbones import small_resnet
from plugins.data import TwoViewAugment
from plugins.data.stream import split_batch
from plugins.methods.simclr.config import SimCLRConfig
from plugins.methods.simclr.model import SimCLR
from plugins.tasks import ContrastiveImageTask

__all__ = ["SimCLRTask"]

_DEFAULTS = SimCLRConfig()


class SimCLRTask(ContrastiveImageTask):
    """SimCLR (Chen et al., ICML 2020) for ``lightning.Trainer``.

    Args:
        in_channels: image bands.
        arch: encoder, ``"tiny"`` or a torchvision ResNet name (:func:`plugins.backbones.small_resnet`).
        temperature, projection_dim, lr, weight_decay, crop_scale, image_size: the
            :class:`SimCLRConfig` fields of the same names (defaults there).
        augment: module ``images -> (view1, view2)``; default ``TwoViewAugment(image_size or the
            input side, scale=crop_scale)``, run on the batch's device.
        gather_distributed: contrast against every rank's samples when the trainer runs more than
            one process (SimCLR's global negatives). Off only to study its effect.
    """

    config_class = SimCLRConfig

    def __init__(
        self,
        in_channels: int = 3,
        arch: str = _DEFAULTS.arch,
        temperature: float = _DEFAULTS.temperature,
        projection_dim: int = _DEFAULTS.projection_dim,
        lr: float = _DEFAULTS.lr,
        weight_decay: float = _DEFAULTS.weight_decay,
        crop_scale: tuple[float, float] = _DEFAULTS.crop_scale,
        image_size: int | None = _DEFAULTS.image_size,
        augment: nn.Module | None = None,
        gather_distributed: bool = True,
    ):
        super().__init__(augment)
        self.save_hyperparameters(ignore=["augment"])
        self.configure_models()

    def configure_models(self) -> None:
        """Encoder (:func:`small_resnet`) + projector: :class:`SimCLR`."""
        encoder, dim = small_resnet(self.hparams.in_channels, self.hparams.arch)
        self.model = SimCLR(encoder, dim, self.config)

    def make_augment(self, size: int) -> nn.Module:
        return TwoViewAugment(size, scale=tuple(self.hparams.crop_scale))

    # -- Lightning hooks --------------------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int = 0) -> dict[str, torch.Tensor]:
        x = split_batch(batch)[0]
        x1, x2 = self.views(x)
        loss = self.model(x1, x2, gather_distributed=self.gather())
        if self._trainer is not None:
            self.log("train_loss", loss, prog_bar=True, batch_size=x.shape[0])
        return {"loss": loss}

    def collapse_features(self, batch: Any, on: str = "representation") -> torch.Tensor:
        """Hook for :class:`plugins.monitoring.CollapseMonitor`: the encoder output r
        (``"representation"``) or the projector output z (``"embedding"``) of the batch's images."""
        r = self.model.encoder(self.prepare(split_batch(batch)[0]))
        return r if on == "representation" else self.model.projector(r)

    def configure_optimizers(self) -> dict[str, Any]:
        """Adam (lr, weight decay) with a per-step cosine schedule over the trainer's estimated
        steps, as :func:`plugins.methods.simclr.train.train_simclr`."""
        opt = torch.optim.Adam(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.total_steps())
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
