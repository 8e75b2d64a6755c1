"""Training loop for HCSC / MoCo v2: per epoch, cluster key features of the whole training set, then
train with selective coding (Guo et al., CVPR 2022, Algorithm 1)."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from plugins.checkpoint import Checkpointer
from plugins.data import ImageTensorDataset, TwoViewAugment
from plugins.errors import UserInputError, check_finite_loss
from plugins.methods.hcsc.kmeans import ClusterResult, hierarchical_kmeans
from plugins.methods.hcsc.model import HCSC, HCSCConfig
from plugins.progress import phase, progress_bar

__all__ = ["TrainHistory", "train_hcsc", "key_features", "selection_stats"]


@dataclass
class TrainHistory:
    """Per-step losses and per-epoch diagnostics (measured with the true labels, never trained on)."""

    losses: list[float] = field(default_factory=list)
    nmi: list[float] = field(
        default_factory=list
    )  # level-0 prototypes vs labels, per clustered epoch
    fn_removed: list[float] = field(default_factory=list)  # false negatives removed, per epoch
    tn_removed: list[float] = field(default_factory=list)  # true negatives removed, per epoch
    clusters: ClusterResult | None = None  # the last epoch's prototypes
    seconds_kmeans: float = 0.0


@torch.no_grad()
def key_features(
    model: HCSC, images: torch.Tensor, batch_size: int = 512, size: int | None = None
) -> torch.Tensor:
    """Normalised key-encoder features (N, dim) of un-augmented images, in eval mode (PCL/HCSC)."""
    was = model.target.training
    model.target.eval()
    dev = next(model.parameters()).device
    out = []
    for s in range(0, len(images), batch_size):
        x = images[s : s + batch_size].to(dev)
        if size is not None and x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        out.append(model.key(x))
    model.target.train(was)
    return torch.cat(out)


def selection_stats(
    keep: torch.Tensor, query_labels: torch.Tensor, queue_labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Counts of removed false negatives, false negatives, removed true negatives, true negatives.

    Args:
        keep: (L, B, K) instance-selection masks.
        query_labels: (B,) true labels of the queries.
        queue_labels: (K,) true labels of the queue keys (-1: empty slot, ignored).
    """
    valid = (queue_labels >= 0)[None, None]
    same = (query_labels[:, None] == queue_labels[None, :])[None] & valid
    other = ~same & valid
    removed = ~keep
    return (removed & same).sum(), same.sum() * 1, (removed & other).sum(), other.sum() * 1


def _optimizer(model: nn.Module, cfg: HCSCConfig, steps: int) -> tuple:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        lr = cfg.lr * cfg.batch_size / 256
        opt = torch.optim.SGD(params, lr, momentum=cfg.sgd_momentum, weight_decay=cfg.weight_decay)
    elif cfg.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=1e-3, weight_decay=1e-6)
    else:
        raise UserInputError(f"optimizer must be 'sgd' or 'adam', got '{cfg.optimizer}'.")
    return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))


def _clusters_state(clusters: ClusterResult | None) -> dict[str, Any] | None:
    """A :class:`ClusterResult` as plain containers of tensors (for checkpoints)."""
    if clusters is None:
        return None
    return {f.name: getattr(clusters, f.name) for f in dataclasses.fields(clusters)}


def _clusters_from(state: dict[str, Any] | None, device: torch.device) -> ClusterResult | None:
    if state is None:
        return None
    moved = {
        k: [t.to(device) for t in v] if k != "objective" else list(v) for k, v in state.items()
    }
    return ClusterResult(**moved)


def train_hcsc(
    dataset: ImageTensorDataset,
    config: HCSCConfig | None = None,
    device: torch.device | str | None = None,
    seed: int = 0,
    progress: bool = True,
    clustering: bool = True,
    encoder: tuple[nn.Module, int] | None = None,
    checkpointer: Checkpointer | None = None,
) -> tuple[HCSC, TrainHistory]:
    """Train HCSC (or MoCo v2 with ``clustering=False``) on ``dataset.images``.

    Labels are used only for the diagnostics in :class:`TrainHistory`. ``checkpointer`` saves the
    training state after optimisation steps (model with its key queue, optimiser, schedule,
    generator, the epoch's prototypes and the queue-to-prototype cache, the history) and resumes
    from its ``--resume`` file to the same final parameters as an uninterrupted run.
    """
    from plugins.backbones import small_resnet
    from plugins.checkpoint import check_resumed_permutation

    cfg = config or HCSCConfig()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(seed)
    images, labels = dataset.images, dataset.labels.to(device)
    size = cfg.image_size or images.shape[-1]
    enc, dim = encoder or small_resnet(images.shape[1], cfg.arch)
    model = HCSC(enc, dim, cfg).to(device)
    augment = TwoViewAugment(size, scale=cfg.crop_scale)
    local = [
        TwoViewAugment(max(4, round(size * s / 224)), scale=cfg.crop_scale)
        for s in (cfg.local_crop_sizes if cfg.multi_crop else ())
    ]
    n = len(images)
    bs = min(cfg.batch_size, n)
    steps = max(1, n // bs)
    total = cfg.epochs * steps
    opt, sched = _optimizer(model, cfg, total)
    hist = TrainHistory()
    g = torch.Generator().manual_seed(seed)
    # what a step depends on besides the modules: the epoch's permutation, prototypes, selection
    # counts and queue-to-prototype cache (rebuilt only when new prototypes arrive)
    state: dict[str, Any] = {
        "perm": torch.empty(0, dtype=torch.long),
        "clusters": None,
        "queue_probs": None,
        "counts": torch.zeros(4, dtype=torch.long),
        "seconds_kmeans": 0.0,
    }
    lists = dict(
        losses=hist.losses, nmi=hist.nmi, fn_removed=hist.fn_removed, tn_removed=hist.tn_removed
    )
    objects = dict(model=model, opt=opt, sched=sched, gen=g, state=state, **lists)
    start = checkpointer.restore(total, **objects) if checkpointer else 0
    check_resumed_permutation(state["perm"], n, start, steps, checkpointer)
    clusters = _clusters_from(state["clusters"], device)
    hist.clusters, hist.seconds_kmeans = clusters, float(state["seconds_kmeans"])
    if clusters is not None and state["queue_probs"] is not None:
        model.set_queue_cache(clusters, state["queue_probs"])
    name = "hcsc" if clustering else "moco"
    bar = progress_bar(total=total, initial=start, desc=name, show=progress)
    for step in range(start, total):
        epoch, s = divmod(step, steps)
        if s == 0:
            clusters = None
            if clustering and epoch >= cfg.warmup_epochs:
                clusters = _cluster(model, images, labels, size, cfg, seed + epoch, hist, progress)
            state.update(perm=torch.randperm(n, generator=g), clusters=_clusters_state(clusters))
            state["counts"] = torch.zeros(4, dtype=torch.long)
        model.train()
        idx = state["perm"][s * bs : (s + 1) * bs].to(device)
        x = images[idx.cpu()].to(device, non_blocking=True)
        xq, xk = augment(x)
        crops = [a.view(x) for a in local]
        loss, logs = model(xq, xk, idx, clusters, crops)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        hist.losses.append(check_finite_loss(loss.detach(), len(hist.losses)))
        if "keep" in logs:
            tags = logs["queue_tags"]
            qlab = torch.where(tags >= 0, labels[tags.clamp_min(0)], -1)
            state["counts"] += torch.stack(selection_stats(logs["keep"], labels[idx], qlab)).cpu()
        counts = state["counts"]
        if s == steps - 1 and clusters is not None and counts[1] > 0:
            hist.fn_removed.append(float(counts[0] / counts[1]))
            hist.tn_removed.append(float(counts[2] / counts[3].clamp_min(1)))
        bar.update()
        bar.set_postfix(epoch=f"{epoch + 1}/{cfg.epochs}", loss=f"{hist.losses[-1]:.3f}")
        if checkpointer:
            state["queue_probs"] = model.queue_cache(clusters)
            state["seconds_kmeans"] = hist.seconds_kmeans
            checkpointer.step(step + 1, **objects)
    bar.close()
    return model, hist


def _cluster(
    model: HCSC,
    images: torch.Tensor,
    labels: torch.Tensor,
    size: int,
    cfg: HCSCConfig,
    seed: int,
    hist: TrainHistory,
    progress: bool,
) -> ClusterResult:
    """The epoch's hierarchical prototypes of the key features of the whole training set."""
    from sklearn.metrics import normalized_mutual_info_score

    t0 = time.perf_counter()
    with phase(f"k-means {'/'.join(map(str, cfg.cluster_sizes))} on {len(images)}", show=progress):
        feats = key_features(model, images, size=size)
        clusters = hierarchical_kmeans(
            feats, cfg.cluster_sizes, cfg.kmeans_restarts, seed, cfg.kmeans_iters, cfg.temperature
        )
    hist.seconds_kmeans += time.perf_counter() - t0
    hist.clusters = clusters
    hist.nmi.append(float(normalized_mutual_info_score(labels.cpu(), clusters.im2cluster[0].cpu())))
    return clusters
