"""DirectCLR (Jing, Vincent, LeCun, Tian, "Understanding Dimensional Collapse in Contrastive
Self-supervised Learning", ICLR 2022, Sec. 6).

No projector: the backbone's representation ``r`` (after global pooling, classifier removed,
``zero_init_residual``) is used directly and InfoNCE sees only its first ``d0`` dimensions::

    z = r[:, :d0]                                              (Sec. 6, "DirectCLR")
    L = (InfoNCE(z1, z2; t) + InfoNCE(z2, z1; t)) / 2,  t = 0.1, cross-view negatives only

Every comparison mode of the paper's Table 1 / Fig. 9 runs through the same code path
(:class:`DirectCLR` ``mode``):

* ``"directclr"`` - first ``d0`` dims of ``r`` (default),
* ``"baseline"`` - the full ``r``, no projector (``"directclr"`` with ``d0 = D``),
* ``"simclr"`` - 2-layer MLP projector ``D -> D -> 128`` (BatchNorm + ReLU between),
* ``"linear"`` - a single bias-free linear ``D x D`` projector (the paper's Sec. 5 analysis).

Related code: lightly's ``DirectCLRLoss`` truncates the same way but applies SimCLR's NT-Xent, whose
denominator also holds the same-view negatives (2N - 2 negatives, temperature 0.5 by default). Our
``negatives="all"`` option reproduces it exactly; ``"cross_view"`` (the default) is the form in the
paper's released code, ``CE(norm(z1) @ norm(z2).T / t, diag)`` averaged over both directions.

Training utilities (LARS, schedule, the asymmetric augmentations) are in
:mod:`plugins.methods.directclr.train`, the command functions in :mod:`plugins.methods.directclr.run`,
the paper's linear toy simulations in :mod:`plugins.methods.directclr.toy`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from plugins.heads import ProjectionHead
from plugins.losses import info_nce, nt_xent
from plugins.methods.directclr.config import DirectCLRConfig

__all__ = [
    "MODES",
    "DirectCLRConfig",
    "DirectCLR",
    "directclr_loss",
    "default_d0",
    "zero_init_residual",
]

MODES = ("directclr", "baseline", "simclr", "linear")


def default_d0(feat_dim: int, fraction: float = DirectCLRConfig.d0_fraction) -> int:
    """``d0`` scaled with the width: ``round(D * 360/2048)``, at least 1 (ResNet-18: 90)."""
    return max(1, min(feat_dim, round(feat_dim * fraction)))


def zero_init_residual(backbone: nn.Module) -> nn.Module:
    """Zero the last BatchNorm's scale of every residual block (torchvision's
    ``zero_init_residual=True``; Goyal et al. 2017), so each block starts as its shortcut. Works for
    torchvision ``BasicBlock``/``Bottleneck`` and any block with ``bn2``+``conv2`` (or ``bn3``)."""
    for m in backbone.modules():
        bn = (
            getattr(m, "bn3", None) if isinstance(getattr(m, "bn3", None), nn.BatchNorm2d) else None
        )
        if (
            bn is None
            and isinstance(getattr(m, "bn2", None), nn.BatchNorm2d)
            and hasattr(m, "conv2")
        ):
            bn = m.bn2
        if bn is not None and bn.weight is not None:
            nn.init.zeros_(bn.weight)
    return backbone


def directclr_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float = 0.1,
    negatives: str = "cross_view",
    gather_distributed: bool = False,
) -> torch.Tensor:
    """Symmetric InfoNCE of DirectCLR on already-truncated embeddings (N, d0).

    ``negatives="cross_view"``: ``(info_nce(z1, z2, t) + info_nce(z2, z1, t)) / 2`` (paper's code).
    ``negatives="all"``: ``nt_xent(z1, z2, t)`` (same-view negatives too; lightly's DirectCLRLoss).
    """
    if negatives == "cross_view":
        return (
            info_nce(z1, z2, temperature, gather_distributed=gather_distributed)
            + info_nce(z2, z1, temperature, gather_distributed=gather_distributed)
        ) / 2
    if negatives == "all":
        return nt_xent(z1, z2, temperature, gather_distributed=gather_distributed)
    raise ValueError(f"negatives must be 'cross_view' or 'all', got {negatives!r}")


class DirectCLR(nn.Module):
    """DirectCLR and its comparison modes around any backbone ``images -> (N, D)``.

    Args:
        backbone: maps a batch of images to the representation ``r`` (N, D) (pooled, no classifier).
            Residual blocks are zero-initialised (paper setting) unless ``zero_init=False``.
        d0: number of leading dims the loss sees (``"directclr"`` only); default
            :func:`default_d0` of ``feat_dim``.
        mode: one of :data:`MODES`.
        feat_dim: D; default ``backbone.out_dim`` or ``backbone.fc.in_features`` when present.
        num_classes: adds the online linear classifier on ``r.detach()`` (never reaches the encoder).
        config: :class:`DirectCLRConfig`.

    ``forward(x1, x2, labels=None)`` returns a dict: ``loss`` (contrastive + online classifier),
    ``contrastive_loss``, ``representation`` (r of view 1, (N, D)), ``embedding`` (z of view 1) and,
    with labels and a classifier, ``classifier_loss`` and ``classifier_acc``.

    Examples:
        >>> from plugins.backbones import small_resnet
        >>> encoder, dim = small_resnet(3, "resnet18")
        >>> model = DirectCLR(encoder, d0=90, mode="directclr", feat_dim=dim)
        >>> out = model(torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32))
    """

    def __init__(
        self,
        backbone: nn.Module,
        d0: int | None = None,
        mode: str = "directclr",
        feat_dim: int | None = None,
        num_classes: int | None = None,
        config: DirectCLRConfig | None = None,
        zero_init: bool = True,
    ):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.config = config or DirectCLRConfig()
        self.mode = mode
        self.backbone = zero_init_residual(backbone) if zero_init else backbone
        if feat_dim is None:
            feat_dim = getattr(backbone, "out_dim", None) or getattr(
                getattr(backbone, "fc", None), "in_features", None
            )
        if feat_dim is None:
            raise ValueError(
                "feat_dim is required: the backbone has neither out_dim nor fc.in_features"
            )
        self.feat_dim = int(feat_dim)
        self.d0 = int(d0) if d0 is not None else default_d0(self.feat_dim, self.config.d0_fraction)
        if not 1 <= self.d0 <= self.feat_dim:
            raise ValueError(f"d0 must be in [1, {self.feat_dim}], got {self.d0}")
        self.projector: nn.Module | None = None
        if mode == "simclr":
            self.projector = ProjectionHead(
                self.feat_dim, self.feat_dim, self.config.projection_dim, batch_norm=True
            )
        elif mode == "linear":
            self.projector = nn.Linear(self.feat_dim, self.feat_dim, bias=False)
        self.classifier = nn.Linear(self.feat_dim, num_classes) if num_classes else None

    def project(self, r: torch.Tensor) -> torch.Tensor:
        """The vector the loss sees, from the representation r (N, D)."""
        if self.mode == "directclr":
            return r[:, : self.d0]
        if self.mode == "baseline":
            return r
        return self.projector(r)

    def forward(
        self,
        x1: torch.Tensor,
        x2: torch.Tensor,
        labels: torch.Tensor | None = None,
        gather_distributed: bool = False,
    ) -> dict[str, torch.Tensor]:
        # one backbone pass per view (per-view BatchNorm statistics), as in the released code
        r1, r2 = self.backbone(x1), self.backbone(x2)
        if r1.ndim != 2 or r1.shape[1] != self.feat_dim:
            raise ValueError(f"backbone must return (N, {self.feat_dim}), got {tuple(r1.shape)}")
        z1, z2 = self.project(r1), self.project(r2)
        loss = directclr_loss(
            z1, z2, self.config.temperature, self.config.negatives, gather_distributed
        )
        out = {"contrastive_loss": loss, "representation": r1, "embedding": z1}
        total = loss
        if self.classifier is not None and labels is not None:
            logits = self.classifier(r1.detach())
            cls = F.cross_entropy(logits.float(), labels)
            out["classifier_loss"] = cls
            out["classifier_acc"] = (logits.argmax(1) == labels).float().mean()
            total = total + cls
        out["loss"] = total
        return out

    def collapse_features(self, images: torch.Tensor, on: str = "representation") -> torch.Tensor:
        """Hook for :class:`plugins.monitoring.CollapseMonitor`: r or z of ``images`` (N, D)."""
        if isinstance(images, list | tuple):
            images = images[0]
        r = self.backbone(images)
        return r if on == "representation" else self.project(r)
