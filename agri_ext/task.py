"""CLAWS as a Lightning task (like torchgeo's ``BaseTask``s): strategies, precision, checkpoints and
loggers come from the ``lightning.Trainer``; the maths stays in :class:`agri_ext.model.CLAWS`, its
losses and :class:`agri_ext.augment.ClawsViews`.

::

    task = CLAWSTask(in_channels=3, contrast="within", within_class="mask")
    data = CLAWSDataModule.for_config(train_set, task.config, seed=0)
    Trainer(strategy="ddp", devices=2, sync_batchnorm=True, precision="bf16-mixed").fit(task, data)

``training_step`` takes ``(images, labels)``, ``(images, labels, masks)`` or a dict (``"image"``,
``"label"``, optional ``"mask"``): images uint8 or float ``(B, C, H, W)``, weak labels ``(B,)``.
Without stored masks the hard masks of ``mask="pixel"`` are computed per batch on its device
(ExG-Otsu for RGB, intensity Otsu otherwise, or ``mask_fn``); they are per-image, so this equals
``train_claws``'s masks of the whole set.

DDP (Herrera-Gerena et al. 2021 contrast each anchor with its weak class): with
``gather_distributed`` the loss all-gathers the embeddings (with gradient) *and* the weak labels of
every rank, so the same-class samples on other ranks join each anchor's contrast (and, for
``contrast="supcon"``, its positives). ``Trainer(sync_batchnorm=True)`` gives BatchNorm the global
batch's statistics, as in the single-process run. ``within_class="batch"`` needs every *global*
batch to hold one class: :class:`agri_ext.datamodule.CLAWSDataModule` shards each class-homogeneous
batch over the ranks; the task checks the labels it is given and refuses mixed batches.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from agri_ext.augment import ClawsViews
from agri_ext.config import CLAWSConfig
from agri_ext.mask import MaskFn, compute_masks
from agri_ext.model import CLAWS
from agri_ext.train import resize
from plugins import distributed as D
from plugins.data.stream import split_batch
from plugins.tasks import ContrastiveImageTask

__all__ = ["CLAWSTask"]

_DEFAULTS = CLAWSConfig()


def _split(batch: Any) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``(images, labels, masks)`` of a batch; labels and masks may be missing (None)."""
    images, labels = split_batch(batch)
    masks = None
    if isinstance(batch, Mapping):
        masks = batch.get("mask", batch.get("masks"))
    elif isinstance(batch, list | tuple) and len(batch) > 2:
        masks = batch[2]
    return images, labels, masks


class CLAWSTask(ContrastiveImageTask):
    """CLAWS (Herrera-Gerena, Sundareswaran, Just, Darr, Jannesari, 2021) for ``lightning.Trainer``.

    Args:
        in_channels: image bands.
        temperature, ..., min_mask_fraction: the :class:`CLAWSConfig` fields of the same names
            (defaults and sources there). ``batch_size`` and ``epochs`` are kept with the
            hyperparameters for :meth:`CLAWSDataModule.for_config` and the caller's trainer; the
            task itself trains on the batches it is given.
        augment: module ``(images, masks or None) -> (x_i, x_c)``; default :class:`ClawsViews`
            (symmetric for the SimCLR / supervised-SimCLR baselines, as ``train_claws``).
        gather_distributed: contrast against every rank's samples and weak labels when the trainer
            runs more than one process. Off only to study its effect.
        mask_fn: the user's mask function for ``mask="pixel"`` (not saved with the hyperparameters).
    """

    config_class = CLAWSConfig

    def __init__(
        self,
        in_channels: int = 3,
        temperature: float = _DEFAULTS.temperature,
        projection_dim: int = _DEFAULTS.projection_dim,
        lr: float = _DEFAULTS.lr,
        batch_size: int = _DEFAULTS.batch_size,
        epochs: int = _DEFAULTS.epochs,
        mask: str = _DEFAULTS.mask,
        contrast: str = _DEFAULTS.contrast,
        within_class: str = _DEFAULTS.within_class,
        shared_encoder: bool = _DEFAULTS.shared_encoder,
        arch: str = _DEFAULTS.arch,
        widths: tuple[int, ...] = _DEFAULTS.widths,
        image_size: int | None = _DEFAULTS.image_size,
        crop_scale: tuple[float, float] = _DEFAULTS.crop_scale,
        crop_scale_c: tuple[float, float] = _DEFAULTS.crop_scale_c,
        jitter_strength: float = _DEFAULTS.jitter_strength,
        p_jitter: float = _DEFAULTS.p_jitter,
        p_gray: float = _DEFAULTS.p_gray,
        supcon_temperature: float = _DEFAULTS.supcon_temperature,
        eval_branch: str = _DEFAULTS.eval_branch,
        min_exg: float = _DEFAULTS.min_exg,
        min_mask_fraction: float = _DEFAULTS.min_mask_fraction,
        augment: nn.Module | None = None,
        gather_distributed: bool = True,
        mask_fn: MaskFn | None = None,
    ):
        super().__init__(augment)
        self.save_hyperparameters(ignore=["augment", "mask_fn"])
        self.mask_fn = mask_fn
        self.configure_models()

    def configure_models(self) -> None:
        """The two-branch network :class:`CLAWS` (validates the config)."""
        self.model = CLAWS(self.hparams.in_channels, self.config)

    @property
    def homogeneous(self) -> bool:
        """Batches must hold one weak class (``contrast="within"``, ``within_class="batch"``)."""
        cfg = self.config
        return cfg.contrast == "within" and cfg.within_class == "batch"

    def make_augment(self, size: int) -> nn.Module:
        cfg = self.config
        # as train_claws: the baselines without a mask use SimCLR's symmetric views
        symmetric = cfg.contrast in ("all", "supcon") and cfg.mask == "none" and cfg.shared_encoder
        return ClawsViews(size, cfg, symmetric=symmetric)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Float images in [0, 1], resized as ``train_claws`` resizes them (bilinear, clamped)."""
        if not x.is_floating_point():
            x = x.float() / 255
        return resize(x, self.hparams.image_size)

    def hard_masks(
        self, x: torch.Tensor, masks: torch.Tensor | None = None, log: bool = False
    ) -> torch.Tensor:
        """(B, 1, H, W) masks of the prepared images: the stored ones resized to them, or
        computed on their device (``log``: the epoch's count of whole-image fallbacks is logged as
        ``mask_fallbacks``)."""
        if masks is not None:
            if masks.ndim == 3:
                masks = masks.unsqueeze(1)
            return resize(masks.float(), x.shape[-1]).round()
        masks, fallbacks = compute_masks(
            x,
            self.mask_fn,
            min_exg=self.hparams.min_exg,
            min_fraction=self.hparams.min_mask_fraction,
        )
        self.last_fallbacks = float(fallbacks)
        if log and self._trainer is not None:
            self.log(
                "mask_fallbacks",
                float(fallbacks),
                reduce_fx="sum",
                on_step=False,
                on_epoch=True,
                sync_dist=True,
            )
        return masks

    def views(
        self, x: torch.Tensor, masks: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_i, x_c)`` of prepared images on their own device."""
        augment = self.augment
        if augment is None:
            size = self.hparams.image_size or x.shape[-1]
            augment = self._default_augment.get(size)
            if augment is None:  # no parameters or buffers: nothing to move or checkpoint
                augment = self._default_augment[size] = self.make_augment(size)
        return augment(x, masks)

    def _check_homogeneous(self, labels: torch.Tensor, gather: bool) -> None:
        """``within_class="batch"`` computes plain NT-Xent: refuse a (global) batch of several
        classes, which would contrast across classes without any error."""
        seen = D.gather_no_grad(labels.reshape(-1)) if gather else labels.reshape(-1)
        if seen.numel() and bool((seen != seen[0]).any()):
            raise ValueError(
                "within_class='batch' needs class-homogeneous batches (over all ranks), got "
                f"{int(torch.unique(seen).numel())} classes in one batch; train with "
                "agri_ext.datamodule.CLAWSDataModule (or CLAWSBatchSampler), or within_class='mask'."
            )

    # -- Lightning hooks --------------------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int = 0) -> dict[str, torch.Tensor]:
        images, labels, masks = _split(batch)
        x = self.prepare(images)
        cfg = self.config
        if labels is not None:
            labels = labels.to(x.device)
        elif cfg.contrast in ("within", "supcon") and not self.homogeneous:
            raise ValueError(f"contrast={cfg.contrast!r} needs batches (images, weak labels)")
        gather = self.gather()
        if self.homogeneous and labels is not None:
            self._check_homogeneous(labels, gather)
        self.last_fallbacks = 0.0
        m = self.hard_masks(x, masks, log=True) if cfg.mask == "pixel" else None
        x_i, x_c = self.views(x, m)
        loss = self.model(x_i, x_c, labels, gather_distributed=gather)
        if self._trainer is not None:
            self.log("train_loss", loss, prog_bar=True, batch_size=x.shape[0])
        # images of this batch whose vegetation mask fell back to the whole image
        return {"loss": loss, "mask_fallbacks": torch.tensor(self.last_fallbacks)}

    def collapse_features(self, batch: Any, on: str = "representation") -> torch.Tensor:
        """Hook for :class:`plugins.monitoring.CollapseMonitor`: the ``eval_branch`` encoder's
        features r (``"representation"``) or that branch's projection z (``"embedding"``). The crop
        branch of a pixel-mask model sees masked images, as in training."""
        images, _, masks = _split(batch)
        x = self.prepare(images)
        branch = self.hparams.eval_branch
        if branch == "crop" and self.hparams.mask == "pixel":
            x = x * self.hard_masks(x, masks).to(x.dtype)
        r = self.model.features(x, branch)
        if on == "representation":
            return r
        return (self.model.projector_i if branch == "image" else self.model.projector_c)(r)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam (lr 3e-4, paper), no schedule, as :func:`agri_ext.train.train_claws`."""
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
