"""Multi-domain U-Net: shared convolutions, domain-specific batch norm, one head per domain.

Boutillon et al., MICCAI 2021, Sec. 2.1-2.2 (Fig. 1): the encoder-decoder filters are shared by
all data sets (domains), every batch norm keeps per-domain parameters and statistics (DSBN) and
every domain has its own final 1x1 convolution with its own number of classes. An embedding of
the bottleneck (global average pool -> MLP -> L2 norm) feeds the contrastive regulariser (Sec. 2.3).

The baselines of the paper are options of the same class:
``shared_bn=True`` (one BN for all domains) and ``shared_head=True`` (one head over the union of
all label sets, background shared; at inference the domain's own channels are read out).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.nets import BasicUNet
from torch import nn

from monai_ext.dsbn import check_domain, domain_context
from monai_ext.multidomain.config import MultiDomainConfig
from plugins.heads import ProjectionHead

__all__ = ["MultiDomainUNet"]
_C = MultiDomainConfig()


class MultiDomainUNet(nn.Module):
    """Shared U-Net with DSBN and per-domain 1x1 output convolutions.

    Args:
        spatial_dims: 2 (slices, the paper's setting) or 3.
        in_channels: image channels.
        domain_classes: number of classes (background included) of each domain, e.g. ``[3, 5]``.
        features: the six widths of MONAI's ``BasicUNet``.
        embedding_dim, embedding_hidden: output and hidden width of the embedding MLP.
        shared_bn: one batch norm for all domains (joint baseline) instead of DSBN.
        shared_head: one head over the union label set (joint baseline).
        default_domain: domain used by ``forward(x)`` without an id (bundle inference,
            ``verify_net_in_out``).
        act, dropout, upsample: passed to ``BasicUNet``.

    Shapes: ``x`` (B, in_channels, *spatial) with every spatial size divisible by 16; ``forward``
    returns (B, C_d, *spatial) logits for a single domain d.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        domain_classes: Sequence[int] = (3, 5),
        features: Sequence[int] = _C.features,
        embedding_dim: int = _C.embedding_dim,
        embedding_hidden: int = _C.embedding_hidden,
        shared_bn: bool = False,
        shared_head: bool = False,
        default_domain: int = 0,
        act: str | tuple = ("LeakyReLU", {"negative_slope": 0.1, "inplace": True}),
        dropout: float = 0.0,
        upsample: str = "deconv",
    ):
        super().__init__()
        # the constructor's arguments in plain types: the bundle's checkpoint stores them so that
        # inference rebuilds this network from the file alone (monai_ext.multidomain.domains)
        self.settings = {
            "spatial_dims": int(spatial_dims),
            "in_channels": int(in_channels),
            "domain_classes": [int(c) for c in domain_classes],
            "features": [int(f) for f in features],
            "embedding_dim": int(embedding_dim),
            "embedding_hidden": int(embedding_hidden),
            "shared_bn": bool(shared_bn),
            "shared_head": bool(shared_head),
            "act": list(act) if isinstance(act, tuple) else act,
            "dropout": float(dropout),
            "upsample": str(upsample),
        }
        self.domain_classes = [int(c) for c in domain_classes]
        if not self.domain_classes or min(self.domain_classes) < 2:
            raise ValueError(
                f"domain_classes needs >= 2 classes per domain, got {list(domain_classes)}"
            )
        self.num_domains = len(self.domain_classes)
        check_domain(default_domain, self.num_domains, "default_domain")
        self.default_domain = int(default_domain)
        self.spatial_dims = spatial_dims
        self.shared_bn, self.shared_head = shared_bn, shared_head
        unet = BasicUNet(
            spatial_dims,
            in_channels,
            2,
            features,
            act=act,
            norm=("batch", {"affine": True}),
            dropout=dropout,
            upsample=upsample,
        )
        del unet.final_conv  # replaced by the per-domain heads
        if not shared_bn:
            from monai_ext.dsbn import convert_to_dsbn

            convert_to_dsbn(unet, self.num_domains)
        self.backbone = unet
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[spatial_dims]
        width = features[5]
        if shared_head:
            # union label set: 0 = background of every domain, then each domain's foreground classes
            offsets, start = [], 1
            for c in self.domain_classes:
                offsets.append(torch.tensor([0] + list(range(start, start + c - 1))))
                start += c - 1
            self.union_classes = start
            self.heads = nn.ModuleList([conv(width, start, 1)])
            for d, idx in enumerate(offsets):
                self.register_buffer(f"union_index_{d}", idx, persistent=False)
        else:
            self.heads = nn.ModuleList(conv(width, c, 1) for c in self.domain_classes)
        self.embedding_head = ProjectionHead(
            features[4], embedding_hidden, embedding_dim, num_layers=2
        )

    # -- building blocks ------------------------------------------------------------------------
    def _trunk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C_in, *S) -> decoder features (B, F, *S) and bottleneck (B, F4, *S/16)."""
        u = self.backbone
        x0 = u.conv_0(x)
        x1 = u.down_1(x0)
        x2 = u.down_2(x1)
        x3 = u.down_3(x2)
        x4 = u.down_4(x3)
        y = u.upcat_1(u.upcat_2(u.upcat_3(u.upcat_4(x4, x3), x2), x1), x0)
        return y, x4

    def embed(self, bottleneck: torch.Tensor) -> torch.Tensor:
        """(B, F4, *S) -> (B, E) L2-normalised embedding."""
        pooled = bottleneck.flatten(2).mean(-1)
        return F.normalize(self.embedding_head(pooled), dim=1)

    def union_index(self, domain: int) -> torch.Tensor:
        return getattr(self, f"union_index_{domain}")

    def head(self, features: torch.Tensor, domain: int, union: bool = False) -> torch.Tensor:
        """Logits of ``domain``: (B, C_d, *S); with a shared head and ``union``, (B, C_union, *S)."""
        if self.shared_head:
            logits = self.heads[0](features)
            return logits if union else logits.index_select(1, self.union_index(domain))
        return self.heads[domain](features)

    def to_union_labels(self, label: torch.Tensor, domain: int) -> torch.Tensor:
        """Map a domain's label map into the union label set of the shared head."""
        return self.union_index(domain).to(label.device)[label.long()]

    # -- forward passes ---------------------------------------------------------------------------
    def _domain_tensor(self, x: torch.Tensor, domain: int | torch.Tensor | None) -> torch.Tensor:
        domain = self.default_domain if domain is None else domain
        check_domain(domain, self.num_domains)
        d = torch.as_tensor(domain, device=x.device).reshape(-1)
        return d.expand(x.shape[0]) if d.numel() == 1 else d

    def forward(self, x: torch.Tensor, domain: int | torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, C_d, *S) for a batch of one domain (``None``: ``default_domain``)."""
        d = self._domain_tensor(x, domain)
        present = torch.unique(d)
        if present.numel() != 1:
            raise ValueError(
                "forward() needs one domain per batch (classes differ); use forward_multi()"
            )
        k = int(present.item())
        with domain_context(self.backbone, k):
            y, _ = self._trunk(x)
        return self.head(y, k)

    def forward_multi(
        self, x: torch.Tensor, domain: torch.Tensor, union: bool = False
    ) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
        """Mixed-domain batch.

        Args:
            x: (B, C_in, *S).
            domain: (B,) domain ids.
            union: with a shared head, return union-label logits (for training the joint baseline).

        Returns:
            ``{d: logits of the samples of domain d, (B_d, C_d, *S)}`` (samples in batch order) and
            the embedding (B, E).
        """
        d = self._domain_tensor(x, domain)
        with domain_context(self.backbone, d):
            y, bottleneck = self._trunk(x)
        out = {}
        for k in torch.unique(d).tolist():
            idx = (d == k).nonzero(as_tuple=True)[0]
            out[int(k)] = self.head(y[idx], int(k), union=union)
        return out, self.embed(bottleneck)
