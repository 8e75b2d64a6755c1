"""Plain-torch training and evaluation of the method and its baselines on in-memory 2-D slices.

The bundle trains with MONAI's engines; this loop uses the same model, loss and sampler on slices
held in memory, so that the reproduction's 12 trainings fit in minutes on a CPU. Baselines
(Boutillon et al., MICCAI 2021, Sec. 3): one model per domain; a joint model with shared BN and a
shared head; the multi-domain model without regulariser; with SupCon; with the margin loss.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from monai_ext.dsbn import DomainSpecificBatchNorm
from monai_ext.multidomain.config import ABLATIONS, CONFIGS, TEST_BN, Settings
from monai_ext.multidomain.loss import MultiDomainLoss
from monai_ext.multidomain.model import MultiDomainUNet
from plugins.errors import check_finite_loss
from plugins.progress import progress_bar

__all__ = [
    "ABLATIONS",
    "CONFIGS",
    "TEST_BN",
    "Settings",
    "adapt_bn_statistics",
    "augment_pool",
    "build",
    "label_subset",
    "predict",
    "surface_scores",
    "train",
]


def label_subset(n: int, fraction: float, seed: int) -> np.ndarray:
    """Indices of the annotated training slices: a random ``fraction`` (at least 2) of ``n``."""
    k = min(n, max(2, int(round(fraction * n))))
    return np.sort(np.random.default_rng(seed).choice(n, k, replace=False))


def augment_pool(
    image: torch.Tensor, label: torch.Tensor, copies: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Originals plus ``copies`` MONAI-augmented versions of each slice (affine, elastic, bias, intensity).

    Augmentation runs once in the data pipeline (as a MONAI DataLoader would), never in the step.
    """
    from monai.transforms import (
        Compose,
        Rand2DElasticd,
        RandAffined,
        RandBiasFieldd,
        RandScaleIntensityd,
        RandShiftIntensityd,
    )

    t = Compose(
        [
            RandAffined(
                ["image", "label"],
                prob=0.7,
                rotate_range=0.2,
                scale_range=0.1,
                translate_range=4,
                mode=["bilinear", "nearest"],
            ),
            Rand2DElasticd(
                ["image", "label"],
                spacing=(16, 16),
                magnitude_range=(1, 2),
                prob=0.3,
                mode=["bilinear", "nearest"],
            ),
            RandBiasFieldd("image", prob=0.3, coeff_range=(0.0, 0.2)),
            RandScaleIntensityd("image", factors=0.1, prob=0.5),
            RandShiftIntensityd("image", offsets=0.05, prob=0.5),
        ]
    )
    t.set_random_state(seed)
    xs, ys = [image], [label]
    for _ in range(copies):
        out = [t({"image": x, "label": y.float()}) for x, y in zip(image, label, strict=True)]
        xs.append(torch.stack([torch.as_tensor(o["image"]).float() for o in out]))
        ys.append(torch.stack([torch.as_tensor(o["label"]).round().long() for o in out]))
    return torch.cat(xs), torch.cat(ys)


def build(
    config: str, domain_classes: Sequence[int], s: Settings
) -> tuple[MultiDomainUNet, MultiDomainLoss]:
    if config not in CONFIGS + ABLATIONS:
        raise ValueError(f"config must be one of {CONFIGS + ABLATIONS}, got {config!r}")
    joint = config == "joint"
    reg = {"md_supcon": "supcon", "md_margin": "margin"}.get(config, "none")
    net = MultiDomainUNet(
        2,
        1,
        domain_classes,
        s.features,
        s.embedding_dim,
        s.embedding_hidden,
        shared_bn=joint or config == "md_shared_bn",
        shared_head=joint,
    )
    return net, MultiDomainLoss(domain_classes, reg, s.lam, s.temperature, s.margin)


class _NumpyGenerator:
    """A numpy ``Generator`` seen through ``state_dict``/``load_state_dict`` (plain types only), so
    that :class:`plugins.checkpoint.Checkpointer` saves and restores the batch draws in place."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def state_dict(self) -> dict[str, Any]:
        return self.rng.bit_generator.state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state


def train(
    net: MultiDomainUNet,
    loss_fn: MultiDomainLoss,
    pools: Sequence[tuple[torch.Tensor, torch.Tensor]],
    s: Settings,
    device: torch.device,
    seed: int = 0,
    progress: bool = False,
    desc: str = "train",
    checkpointer: Any = None,
) -> list[float]:
    """``s.steps`` Adam steps on batches holding ``samples_per_domain`` slices of every domain.

    Args:
        checkpointer: a :class:`plugins.checkpoint.Checkpointer`: ``last.ckpt`` is written when due
            (network, Adam state, the batch generator, the loss history) and a ``--resume`` file is
            restored first, so an interrupted run continues to the same final parameters.

    Returns:
        the loss of every step.
    """
    net.to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=s.lr)
    rng = _NumpyGenerator(np.random.default_rng(seed))
    k = len(pools)
    domain = torch.arange(k, device=device).repeat_interleave(s.samples_per_domain)
    history: list[float] = []
    state = {"model": net, "opt": opt, "rng": rng, "history": history}
    start = checkpointer.restore(s.steps, **state) if checkpointer else 0
    with progress_bar(total=s.steps, initial=start, desc=desc, show=progress) as bar:
        for step in range(start, s.steps):
            picks = [rng.rng.integers(0, len(p[0]), s.samples_per_domain) for p in pools]
            x = torch.cat([p[0][i] for p, i in zip(pools, picks, strict=True)]).to(device)
            y = torch.cat([p[1][i] for p, i in zip(pools, picks, strict=True)]).to(device)
            logits, emb = net.forward_multi(x, domain, union=net.shared_head)
            loss, _ = loss_fn(logits, y, domain, emb, model=net)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            history.append(check_finite_loss(loss.detach(), step))
            bar.update()
            bar.set_postfix(loss=f"{history[-1]:.4f}", refresh=False)
            if checkpointer:
                checkpointer.step(step + 1, **state)
    return history


@torch.no_grad()
def adapt_bn_statistics(
    net: MultiDomainUNet, image: torch.Tensor, domain: int, device: torch.device, batch: int = 64
) -> MultiDomainUNet:
    """A copy of ``net`` whose batch-norm statistics of ``domain`` are re-estimated on ``image``.

    AdaBN (Li et al., "Adaptive batch normalization for practical domain adaptation", Pattern
    Recognition 80, 2018): every learned weight stays; only the running mean and variance are
    replaced by those of the target images (unlabelled, e.g. a domain's test slices). Only the
    domain's DSBN slot changes; with a shared BN, the shared statistics. Batches are averaged with
    equal weight (``momentum=None``), so one batch gives the images' exact statistics.
    """
    net = copy.deepcopy(net).to(device)
    # the model converts every BN or none: it holds DSBN slots or shared BNs, never both
    targets = [m.bns[domain] for m in net.modules() if isinstance(m, DomainSpecificBatchNorm)]
    for bn in targets or [m for m in net.modules() if isinstance(m, _BatchNorm)]:
        bn.reset_running_stats()
        bn.momentum = None
    net.train()
    for x in image.split(batch):
        net.forward_multi(x.to(device), torch.full((len(x),), domain, device=device))
    return net.eval()


@torch.no_grad()
def predict(
    net: MultiDomainUNet, image: torch.Tensor, domain: int, device: torch.device, batch: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Label maps (N, 1, H, W) and embeddings (N, E) of slices of one domain."""
    net.to(device).eval()
    preds, embs = [], []
    for x in image.split(batch):
        logits, emb = net.forward_multi(x.to(device), torch.full((len(x),), domain, device=device))
        preds.append(logits[domain].argmax(1, keepdim=True).cpu())
        embs.append(emb.cpu())
    return torch.cat(preds), torch.cat(embs)


def surface_scores(
    pred: torch.Tensor,
    truth: torch.Tensor,
    slab: np.ndarray,
    num_classes: int,
    spacing: Sequence[float],
) -> dict[str, np.ndarray]:
    """Per-structure Dice, HD95 (mm), ASSD (mm) and RAVD on each contiguous test slab (3-D), averaged.

    Args:
        pred, truth: (N, 1, H, W) label maps of consecutive slices; ``slab`` (N,) slab ids.
        spacing: (in-plane, in-plane, through-plane) mm.

    Returns:
        ``{"dice", "hd95", "assd", "ravd", "missed"}`` each (num_classes - 1,), NaN where a structure
        is absent from every slab. HD95 and ASSD are undefined where a structure is in the truth but
        not predicted, so their means leave those slabs out and would flatter a model that misses
        structures; ``missed`` is the fraction of the slabs holding a structure where it was not
        predicted at all, to read beside them.
    """
    from monai_ext.multidomain.evaluate import case_scores

    rows = {k: [] for k in ("dice", "hd95", "assd", "ravd", "missed")}
    for s in np.unique(slab):
        idx = torch.from_numpy(np.nonzero(slab == s)[0])
        # (N,1,H,W) -> (H, W, N): the slab's slices become the third spatial axis
        p, t = pred[idx, 0].permute(1, 2, 0), truth[idx, 0].permute(1, 2, 0)
        for key, value in case_scores(p, t, num_classes, spacing).items():
            rows[key].append(value)
        vp = torch.bincount(p.reshape(-1).long(), minlength=num_classes)[1:num_classes].numpy()
        vt = torch.bincount(t.reshape(-1).long(), minlength=num_classes)[1:num_classes].numpy()
        rows["ravd"].append(np.where(vt > 0, np.abs(vp - vt) / np.maximum(vt, 1), np.nan))
        rows["missed"].append(np.where(vt > 0, (vp == 0).astype(float), np.nan))
    out = {}
    for k, v in rows.items():
        a = np.stack(v).astype(float)
        a[~np.isfinite(a)] = np.nan  # empty truth or prediction: undefined, left out of the mean
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay NaN
            out[k] = np.nanmean(a, 0)
    return out
