"""What every generic method's Lightning task shares: its config dataclass rebuilt from the saved
hyperparameters, the DDP gather switch, views drawn on the batch's device, images prepared for the
encoder outside the augmentation, and the trainer's step count for per-step schedules.

A task subclasses :class:`ContrastiveImageTask`, names ``config_class`` and implements
``make_augment(size)``; the maths stays in the method's model and loss.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import nn

from plugins import distributed as D

__all__ = ["ContrastiveImageTask"]


class ContrastiveImageTask(LightningModule):
    """Base of :class:`~plugins.methods.simclr.task.SimCLRTask` and
    :class:`~plugins.methods.directclr.task.DirectCLRTask`.

    Subclasses save ``gather_distributed`` and ``image_size`` among their hyperparameters and
    pass ``augment`` (``None``: :meth:`make_augment`, built once per image side).
    """

    config_class: type

    def __init__(self, augment: nn.Module | None = None):
        super().__init__()
        self.augment = augment
        self._default_augment: dict[int, nn.Module] = {}

    @property
    def config(self) -> Any:
        """``config_class`` from the hyperparameters of the same names (lists back to tuples);
        fields the task does not take keep their defaults."""
        values = {}
        for f in dataclasses.fields(self.config_class):
            if f.init and f.name in self.hparams:
                value = self.hparams[f.name]
                values[f.name] = tuple(value) if isinstance(f.default, tuple) else value
        return self.config_class(**values)

    @classmethod
    def config_fields(cls) -> list[str]:
        """The ``config_class`` fields this task takes as arguments (so a run can pass a config)."""
        import inspect

        params = inspect.signature(cls.__init__).parameters
        return [f.name for f in dataclasses.fields(cls.config_class) if f.init and f.name in params]

    def make_augment(self, size: int) -> nn.Module:
        """The method's two-view augmentation for images of side ``size``."""
        raise NotImplementedError

    def gather(self) -> bool:
        """Contrast against every rank's samples: asked for, and more than one process trains."""
        if not self.hparams.gather_distributed:
            return False
        trainer = self._trainer
        world = trainer.world_size if trainer is not None else D.world_size()
        return world > 1

    def views(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Two views of ``x`` on its own device."""
        augment = self.augment
        if augment is None:
            size = self.hparams.image_size or x.shape[-1]
            augment = self._default_augment.get(size)
            if augment is None:  # no parameters or buffers: nothing to move or checkpoint
                augment = self._default_augment[size] = self.make_augment(size)
        return augment(x)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Images as the encoder sees them outside the augmentation: float in [0, 1], resized."""
        if not x.is_floating_point():
            x = x.float() / 255
        size = self.hparams.image_size
        if size is not None and tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return x

    def total_steps(self) -> int:
        """The trainer's estimated optimisation steps (1 outside a trainer or when unbounded)."""
        trainer = self._trainer
        if trainer is None:
            return 1
        total = trainer.estimated_stepping_batches
        return max(1, int(total)) if total != float("inf") else 1
