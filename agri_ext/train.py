"""Training loop and GMM / k-means evaluation for CLAWS and its baselines (plain torch)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits

from agri_ext.augment import ClawsViews
from agri_ext.config import CLAWSConfig
from agri_ext.mask import MaskFn, compute_masks
from agri_ext.model import CLAWS
from agri_ext.sampling import class_homogeneous_batches, random_batches
from plugins.data import ImageTensorDataset
from plugins.errors import check_finite_loss
from plugins.evaluation import embed
from plugins.metrics import cluster_scores
from plugins.progress import progress_bar

if TYPE_CHECKING:
    from plugins.checkpoint import Checkpointer

__all__ = ["train_claws", "embed_branch", "evaluate_clustering", "resize", "steps_per_epoch"]


def _device(device: torch.device | str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resize(images: torch.Tensor, size: int | None) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, size, size), bilinear; unchanged when ``size`` is None or equal."""
    if size is None or images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).clamp(
        0, 1
    )


def steps_per_epoch(labels: torch.Tensor, batch_size: int, homogeneous: bool) -> int:
    """Optimisation steps of one epoch: the number of batches :func:`random_batches` or
    :func:`class_homogeneous_batches` give (it does not depend on the shuffle)."""
    if homogeneous:
        counts = torch.bincount(labels.reshape(-1).cpu())
        return int(sum(-(-int(c) // batch_size) for c in counts if c > 0))
    n = int(labels.numel())
    steps = n // batch_size + int(n % batch_size > 1)
    return max(steps, 1)


def train_claws(
    dataset: ImageTensorDataset,
    config: CLAWSConfig | None = None,
    masks: torch.Tensor | None = None,
    mask_fn: MaskFn | None = None,
    device: torch.device | str | None = None,
    seed: int = 0,
    progress: bool = True,
    checkpointer: Checkpointer | None = None,
) -> tuple[CLAWS, list[float], dict[str, float]]:
    """Train CLAWS (or a baseline set by ``config``) on ``dataset`` with its labels as weak labels.

    Args:
        dataset: images (N, C, H, W) in [0, 1] with weak labels (N,).
        config: :class:`CLAWSConfig`.
        masks: stored hard masks (N, 1, H, W) in {0, 1}; else computed with ``mask_fn`` (default:
            ExG-Otsu for RGB, intensity Otsu otherwise) once, in batches on ``device``.
        device: default CUDA when available.
        progress: show a bar that moves per optimisation step.
        checkpointer: saves model, optimiser, batch generator and losses after each epoch when due
            and resumes from ``--resume`` (:class:`plugins.checkpoint.Checkpointer`; one step = one
            epoch); the global RNG (augmentations) is saved with them.

    Returns:
        The model, per-step losses, and ``{"mask_fallbacks": images whose mask is the whole image}``.
    """
    cfg = (config or CLAWSConfig()).validate()
    device = _device(device)
    torch.manual_seed(seed)
    images = resize(dataset.images, cfg.image_size)
    labels = dataset.labels
    info = {"mask_fallbacks": 0.0}
    if cfg.mask == "pixel":
        if masks is None:
            masks, fallbacks = compute_masks(
                images,
                mask_fn,
                device=device,
                min_exg=cfg.min_exg,
                min_fraction=cfg.min_mask_fraction,
            )
            info["mask_fallbacks"] = float(fallbacks)
        masks = resize(masks.float(), images.shape[-1]).round()
    symmetric = cfg.contrast in ("all", "supcon") and cfg.mask == "none" and cfg.shared_encoder
    views = ClawsViews(images.shape[-1], cfg, symmetric=symmetric)
    model = CLAWS(images.shape[1], cfg).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    g = torch.Generator().manual_seed(seed)
    homogeneous = cfg.contrast == "within" and cfg.within_class == "batch"
    losses: list[float] = []
    model.train()
    start = (
        checkpointer.restore(cfg.epochs, model=model, opt=opt, gen=g, losses=losses)
        if checkpointer
        else 0
    )
    per_epoch = steps_per_epoch(labels, cfg.batch_size, homogeneous)
    bar = progress_bar(
        total=cfg.epochs * per_epoch,
        initial=start * per_epoch,
        desc=f"claws[{cfg.contrast},{cfg.mask}]",
        show=progress,
    )
    for epoch in range(start, cfg.epochs):
        if homogeneous:
            batches = class_homogeneous_batches(labels, cfg.batch_size, g)
        else:
            batches = random_batches(len(images), cfg.batch_size, g)
        for idx in batches:
            x = images[idx].to(device, non_blocking=True)
            m = masks[idx].to(device, non_blocking=True) if masks is not None else None
            x_i, x_c = views(x, m)
            loss = model(x_i, x_c, labels[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(check_finite_loss(loss.detach(), len(losses)))
            bar.update()
            bar.set_postfix(epoch=epoch + 1, loss=f"{losses[-1]:.3f}", refresh=False)
        if checkpointer:
            checkpointer.step(epoch + 1, model=model, opt=opt, gen=g, losses=losses)
    bar.close()
    return model, losses, info


def embed_branch(
    model: CLAWS,
    images: torch.Tensor,
    branch: str = "image",
    mask_fn: MaskFn | None = None,
    masked: bool | None = None,
) -> torch.Tensor:
    """(N, n) frozen features of ``images`` from one branch. ``masked`` multiplies the images by their
    hard masks first; by default only the crop branch of a pixel-mask model does, as in training."""
    cfg = model.config
    device = next(model.parameters()).device
    images = resize(images, cfg.image_size)
    if masked is None:
        masked = branch == "crop" and cfg.mask == "pixel"
    if masked:
        masks, _ = compute_masks(
            images,
            mask_fn,
            device=device,
            min_exg=cfg.min_exg,
            min_fraction=cfg.min_mask_fraction,
        )
        images = images * masks
    return embed(model.branch_encoder(branch), images, batch_size=256, device=device)


def evaluate_clustering(
    z: torch.Tensor,
    labels: torch.Tensor,
    seed: int = 0,
    methods: tuple[str, ...] = ("gmm", "kmeans"),
) -> dict[str, float]:
    """NMI / ARI / AMI / Hungarian accuracy of GMM and k-means with #classes components on the
    L2-normalised features (z (N, D)); keys like ``gmm_nmi``. Normalising is ours: the contrastive
    loss only sees directions."""
    zn = F.normalize(z.double(), dim=1)
    k = int(torch.unique(labels).numel())
    out = {}
    # one BLAS/OpenMP thread: on a shared CPU, oversubscribed sklearn runs ~40x slower
    with threadpool_limits(limits=1):
        for method in methods:
            for key, v in cluster_scores(zn, labels, k, method=method, seed=seed).items():
                out[f"{method}_{key}"] = v
    return out
