"""SuperCon's two training stages and the baselines, on in-memory image tensors.

Stage 1 (Chen et al. 2022, Sec. 3.1-3.2): supervised contrastive loss (Khosla et al. 2020, eq. 2,
``plugins.losses.sup_con``) on the (plain, strong) view pair of each image. Stage 2 (Sec. 3.3):
linear classifier with cross-entropy on the frozen encoder. Baselines trained by the same code:
cross-entropy end to end, class-weighted CE, focal loss (Lin et al. 2017), and SupCon with two
strong views (the symmetric original).

Every loop counts optimisation steps (progress per step) and takes an optional
:class:`plugins.checkpoint.Checkpointer`: ``last.ckpt`` is written every N steps or T seconds with
the model, optimiser, scheduler, batch generator, the current epoch's batch order and the loss
history, so that a resumed run reaches the same parameters as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from monai_ext.supercon.augment import AsymmetricViews, resize
from monai_ext.supercon.config import SuperConConfig
from monai_ext.supercon.data import class_balanced_sampler
from monai_ext.supercon.model import SuperConNet
from plugins.errors import check_finite_loss
from plugins.losses import sup_con
from plugins.progress import progress_bar

__all__ = [
    "stage1_loss",
    "train_stage1",
    "train_stage2",
    "train_baseline",
    "focal_loss",
    "class_weights",
    "steps_per_epoch",
    "predict_proba",
    "evaluate",
]


def stage1_loss(
    net: SuperConNet,
    views: tuple[torch.Tensor, torch.Tensor],
    labels: torch.Tensor,
    config: SuperConConfig | None = None,
) -> torch.Tensor:
    """SupCon loss of the two views (each (B, C, H, W)) of a labelled batch (B,).

    Both views go through the network in one batch (as the reference does), the embeddings are
    stacked to (B, 2, 128) and passed to :func:`plugins.losses.sup_con`.
    """
    cfg = config or SuperConConfig()
    b = labels.shape[0]
    z = net(torch.cat(views, 0), project=True)
    feats = torch.stack([z[:b], z[b:]], dim=1)
    return sup_con(feats, labels, cfg.temperature, cfg.base_temperature)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Multi-class focal loss ``mean_i -(1 - p_{i,y})^gamma log p_{i,y}`` (Lin et al. 2017, eq. 4),
    float32. logits (B, K), target (B,)."""
    logp = F.log_softmax(logits.float(), dim=1).gather(1, target[:, None]).squeeze(1)
    return (-((1 - logp.exp()) ** gamma) * logp).mean()


def class_weights(labels: np.ndarray | torch.Tensor, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights ``N / (K n_k)`` (sklearn's "balanced"); (K,) float32."""
    y = torch.as_tensor(np.asarray(labels)).long()
    counts = torch.bincount(y, minlength=num_classes).float().clamp_min(1)
    return len(y) / (num_classes * counts)


def _epoch_order(labels: torch.Tensor, balanced: bool, gen: torch.Generator) -> torch.Tensor:
    """The order of one epoch's samples: a permutation, or class-balanced draws with replacement."""
    n = len(labels)
    if balanced:
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
        return torch.tensor(list(class_balanced_sampler(labels, n, seed)))
    return torch.randperm(n, generator=gen)


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Batches of an epoch of ``n`` samples; a last batch of one sample is dropped (BatchNorm)."""
    full, rest = divmod(n, batch_size)
    return full + (rest > 1)


class _Steps:
    """The optimisation steps of ``epochs`` epochs: yields ``(epoch, batch indices)``.

    On construction it restores ``objects`` from the checkpointer's ``--resume`` file (so callers
    may compute anything that depends on the restored model afterwards); after each step the
    caller completes, it steps ``sched`` at the epoch's end, moves the progress bar and lets the
    checkpointer save. The epoch's batch order is part of the saved state, so a run can resume
    in the middle of an epoch.
    """

    def __init__(
        self,
        labels: torch.Tensor,
        batch_size: int,
        epochs: int,
        balanced: bool,
        gen: torch.Generator,
        losses: list[float],
        checkpointer: Any = None,
        sched: Any = None,
        desc: str = "",
        progress: bool = False,
        **objects: Any,
    ):
        self.labels, self.batch_size, self.epochs = labels, batch_size, epochs
        self.balanced, self.gen, self.losses = balanced, gen, losses
        self.checkpointer, self.sched = checkpointer, sched
        self.desc, self.progress = desc, progress
        self.per_epoch = steps_per_epoch(len(labels), batch_size)
        self.total = epochs * self.per_epoch
        self.order: dict[str, torch.Tensor] = {}
        self.objects = {**objects, "gen": gen, "losses": losses, "order": self.order}
        if sched is not None:
            self.objects["sched"] = sched
        self.start = checkpointer.restore(self.total, **self.objects) if checkpointer else 0

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor]]:
        bs = self.batch_size
        with progress_bar(
            total=self.total, initial=self.start, desc=self.desc, show=self.progress
        ) as bar:
            for step in range(self.start, self.total):
                epoch, i = divmod(step, self.per_epoch)
                if i == 0:
                    self.order["order"] = _epoch_order(self.labels, self.balanced, self.gen)
                yield epoch, self.order["order"][i * bs : (i + 1) * bs]
                # the caller's step is complete here
                if self.sched is not None and i == self.per_epoch - 1:
                    self.sched.step()
                bar.update()
                bar.set_postfix(
                    epoch=f"{epoch + 1}/{self.epochs}", loss=f"{self.losses[-1]:.3f}", refresh=False
                )
                if self.checkpointer is not None:
                    self.checkpointer.step(step + 1, **self.objects)


def _sgd(params: list, lr: float, cfg: SuperConConfig, epochs: int) -> tuple:
    opt = torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    # decay at 1/3 and 2/3 of training (StepLR(step_size=epochs // 3) would decay a third time
    # at the last epoch when epochs is a multiple of 3, and more often for short runs)
    milestones = sorted({max(1, round(epochs * i / cfg.lr_steps)) for i in range(1, cfg.lr_steps)})
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma=cfg.lr_decay)
    return opt, sched


def train_stage1(
    net: SuperConNet,
    images: torch.Tensor,
    labels: torch.Tensor,
    config: SuperConConfig | None = None,
    epochs: int | None = None,
    symmetric: bool = False,
    balanced: bool = False,
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: bool = False,
    checkpointer: Any = None,
) -> list[float]:
    """Stage 1 on images (N, C, H, W) (uint8 or [0, 1]) and labels (N,); returns per-step losses.

    SGD on encoder + head, step decay x0.1 every third of ``epochs`` (paper Sec. 4.1).
    ``checkpointer``: a :class:`plugins.checkpoint.Checkpointer` for periodic ``last.ckpt`` files
    and ``--resume`` (a run resumed in a later stage skips this loop and returns no losses).
    """
    cfg = config or SuperConConfig()
    epochs = cfg.stage1_epochs if epochs is None else epochs
    views = AsymmetricViews(cfg.image_size, cfg, symmetric=symmetric)
    params = list(net.encoder.parameters()) + list(net.head.parameters())
    opt, sched = _sgd(params, cfg.lr1, cfg, epochs)
    gen = torch.Generator().manual_seed(seed)
    labels = torch.as_tensor(labels).long()
    net.to(device).train()
    losses: list[float] = []
    steps = _Steps(
        labels, cfg.batch_size, epochs, balanced, gen, losses, checkpointer, sched,
        "stage 1", progress, model=net, opt=opt,
    )  # fmt: skip
    for _, idx in steps:
        x, y = images[idx].to(device), labels[idx].to(device)
        loss = stage1_loss(net, views(x), y, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(check_finite_loss(loss.detach(), len(losses)))
    return losses


def train_stage2(
    net: SuperConNet,
    images: torch.Tensor,
    labels: torch.Tensor,
    config: SuperConConfig | None = None,
    epochs: int | None = None,
    balanced: bool = False,
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: bool = False,
    checkpointer: Any = None,
    history: dict[str, list[float]] | None = None,
) -> list[float]:
    """Stage 2: linear classifier with CE on the frozen encoder; returns per-step losses.

    Only ``net.classifier`` is optimised (SGD lr ``lr2``, momentum 0.9). With the default
    ``stage2_encoder_mode="eval"`` the encoder is a fixed function, so its features are computed
    once; ``"train"`` (the reference's behaviour) runs the encoder with BatchNorm in train mode on
    every batch. ``checkpointer``: see :func:`train_stage1`; ``history`` (e.g. stage 1's loss
    curve) is saved with this stage's checkpoints and restored in place on ``--resume``.
    """
    cfg = config or SuperConConfig()
    epochs = cfg.stage2_epochs if epochs is None else epochs
    params = net.freeze_encoder(cfg.stage2_encoder_mode)
    opt = torch.optim.SGD(params, lr=cfg.lr2, momentum=cfg.momentum)
    gen = torch.Generator().manual_seed(seed)
    labels = torch.as_tensor(labels).long()
    net.to(device).train()
    losses: list[float] = []
    extra = {"history": history} if history is not None else {}
    steps = _Steps(
        labels, cfg.batch_size, epochs, balanced, gen, losses, checkpointer, None,
        "stage 2", progress, model=net, opt=opt, **extra,
    )  # fmt: skip
    cached = None
    if cfg.stage2_encoder_mode == "eval" and steps.start < steps.total:
        cached = encoder_features(net, images, cfg.image_size, device)  # of the restored encoder
    for _, idx in steps:
        y = labels[idx].to(device)
        if cached is not None:
            logits = net.classifier(cached[idx.to(cached.device)])
        else:
            logits = net(resize(_float(images[idx].to(device)), cfg.image_size))
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(check_finite_loss(loss.detach(), len(losses)))
    return losses


def train_baseline(
    net: SuperConNet,
    images: torch.Tensor,
    labels: torch.Tensor,
    loss: str = "ce",
    config: SuperConConfig | None = None,
    epochs: int | None = None,
    balanced: bool = False,
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: bool = False,
    checkpointer: Any = None,
) -> list[float]:
    """End-to-end classifier: ``loss`` in ``ce`` | ``weighted_ce`` | ``focal``; strong-view inputs,
    same optimiser and schedule as stage 1. Returns per-step losses. ``checkpointer``: see
    :func:`train_stage1`."""
    if loss not in ("ce", "weighted_ce", "focal"):
        raise ValueError(f"loss must be 'ce', 'weighted_ce' or 'focal', got {loss!r}")
    cfg = config or SuperConConfig()
    epochs = cfg.stage1_epochs if epochs is None else epochs
    views = AsymmetricViews(cfg.image_size, cfg)
    params = list(net.encoder.parameters()) + list(net.classifier.parameters())
    opt, sched = _sgd(params, cfg.lr1, cfg, epochs)
    gen = torch.Generator().manual_seed(seed)
    labels = torch.as_tensor(labels).long()
    k = net.classifier.out_features
    weight = class_weights(labels, k).to(device) if loss == "weighted_ce" else None
    net.to(device).train()
    losses: list[float] = []
    steps = _Steps(
        labels, cfg.batch_size, epochs, balanced, gen, losses, checkpointer, sched,
        loss, progress, model=net, opt=opt,
    )  # fmt: skip
    for _, idx in steps:
        x, y = images[idx].to(device), labels[idx].to(device)
        logits = net(views.strong.view(_float(x))).float()
        if loss == "focal":
            value = focal_loss(logits, y, cfg.focal_gamma)
        else:
            value = F.cross_entropy(logits, y, weight=weight)
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        losses.append(check_finite_loss(value.detach(), len(losses)))
    return losses


def _float(x: torch.Tensor) -> torch.Tensor:
    return x if x.is_floating_point() else x.float() / 255


@torch.no_grad()
def encoder_features(
    net: SuperConNet, images: torch.Tensor, size: int, device: torch.device | str, bs: int = 256
) -> torch.Tensor:
    """Encoder features (N, D) of ``images`` at ``size`` in eval mode, ``bs`` at a time (stage 2
    trains the linear classifier on these; the encoder is frozen there)."""
    was = net.training
    net.encoder.eval()
    out = torch.cat(
        [
            net.features(resize(_float(images[i : i + bs].to(device)), size))
            for i in range(0, len(images), bs)
        ]
    )
    net.train(was)
    return out


@torch.no_grad()
def predict_proba(
    net: SuperConNet,
    images: torch.Tensor,
    size: int,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
) -> torch.Tensor:
    """Class probabilities (N, K) of plain resized images, network in eval mode."""
    net.to(device).eval()
    return torch.cat(
        [
            net(resize(_float(images[i : i + batch_size].to(device)), size))
            .float()
            .softmax(1)
            .cpu()
            for i in range(0, len(images), batch_size)
        ]
    )


def evaluate(
    probs: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    classes: list[str],
    positive: int | None = None,
    threshold: float | None = None,
) -> tuple[dict[str, float], np.ndarray]:
    """Metrics of probabilities (N, K) against labels (N,), and the confusion matrix (K, K)
    ``[true, pred]``.

    Keys: ``precision_<c>``, ``recall_<c>``, ``f1_<c>`` per class, ``balanced_accuracy`` (mean
    recall of the argmax predictions), ``roc_auc`` (from the positive class's **scores**, binary
    one-vs-rest, when ``positive`` is given; macro one-vs-rest otherwise) and, with ``positive``,
    ``positive_f1`` (F1 of the argmax predictions for that class), ``positive_predicted`` (how many
    samples the argmax assigns to it) and ``positive_max_prob`` (its highest probability). With
    ``positive`` and a ``threshold`` (an operating point chosen on validation data, e.g. with
    :func:`plugins.metrics.f1_optimal_threshold`), also ``positive_f1_at_threshold``,
    ``positive_predicted_at_threshold`` and ``balanced_accuracy_at_threshold`` for
    ``p[:, positive] >= threshold``, positive vs rest.
    ``roc_auc_score`` on hard 0/1 predictions equals balanced accuracy and is never reported as AUC.
    """
    from sklearn import metrics

    from plugins.metrics import binary_scores

    p = np.asarray(torch.as_tensor(probs).float())
    y = np.asarray(torch.as_tensor(labels)).astype(np.int64)
    k = len(classes)
    pred = p.argmax(1)
    prec, rec, f1, _ = metrics.precision_recall_fscore_support(
        y, pred, labels=list(range(k)), zero_division=0
    )
    out: dict[str, float] = {}
    for i, c in enumerate(classes):
        out[f"precision_{c}"], out[f"recall_{c}"], out[f"f1_{c}"] = (
            float(prec[i]),
            float(rec[i]),
            float(f1[i]),
        )
    out["balanced_accuracy"] = float(metrics.balanced_accuracy_score(y, pred))
    if positive is not None:
        out["roc_auc"] = binary_scores(p[:, positive], (y == positive).astype(np.int64))["roc_auc"]
        out["positive_f1"] = float(f1[positive])
        # why an F1 is 0: how many test images the argmax calls positive, and the top score
        out["positive_predicted"] = float((pred == positive).sum())
        out["positive_max_prob"] = float(p[:, positive].max()) if len(p) else float("nan")
        if threshold is not None:
            at = binary_scores(p[:, positive], (y == positive).astype(np.int64), threshold)
            out["threshold"] = float(threshold)
            out["positive_f1_at_threshold"] = at["f1"]
            out["balanced_accuracy_at_threshold"] = at["balanced_accuracy"]
            out["positive_predicted_at_threshold"] = float((p[:, positive] >= threshold).sum())
    elif len(np.unique(y)) == k:
        out["roc_auc"] = float(metrics.roc_auc_score(y, p, multi_class="ovr", average="macro"))
    else:
        out["roc_auc"] = float("nan")
    cm = metrics.confusion_matrix(y, pred, labels=list(range(k)))
    return out, cm
