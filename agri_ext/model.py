"""CLAWS network: one encoder per view (or a shared one), bias-free projection heads, and the optional
straight-through feature mask."""

from __future__ import annotations

import torch
from torch import nn

from agri_ext.config import CLAWSConfig
from agri_ext.loss import within_class_nt_xent
from plugins.backbones import TinyResNet, small_resnet
from plugins.heads import ProjectionHead
from plugins.losses import nt_xent, sup_con

__all__ = ["CLAWS", "StraightThroughGate", "build_encoder"]


def build_encoder(in_channels: int, config: CLAWSConfig) -> tuple[nn.Module, int]:
    """``TinyResNet`` with ``config.widths`` for ``arch="tiny"``, else the SimCLR small ResNet."""
    if config.arch == "tiny":
        net = TinyResNet(in_channels, tuple(config.widths))
        return net, net.out_dim
    return small_resnet(in_channels, config.arch)


class StraightThroughGate(nn.Module):
    """Hard feature attention: ``h * m`` with ``m = round(sigmoid(MLP(h)))`` in {0, 1}.

    Rounding has zero gradient, so the attention MLP would never learn; the straight-through estimator
    (Bengio et al., 2013) uses the sigmoid's gradient in the backward pass:
    ``m = m_hard + (m_soft - m_soft.detach())``. The bracket is exactly 0 in the forward pass, so the
    forward values stay exactly 0/1 (``m_hard + m_soft - m_soft.detach()`` would round in float).

    Args:
        dim: feature width n; the MLP is Linear(n, n)-ReLU-Linear(n, n).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim))

    def mask(self, h: torch.Tensor) -> torch.Tensor:
        """(B, n) features -> (B, n) mask, exactly 0/1 forward, sigmoid gradient backward."""
        soft = torch.sigmoid(self.mlp(h))
        hard = (soft > 0.5).to(soft.dtype)
        return hard + (soft - soft.detach())

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h * self.mask(h)


class CLAWS(nn.Module):
    """CLAWS (Herrera-Gerena, Sundareswaran, Just, Darr, Jannesari, 2021).

    ``x_i`` (random resized crop) -> encoder_i -> g_i; ``x_c`` (masked crop) -> encoder_c
    [-> feature gate] -> g_c; the loss contrasts the two projections. ``g`` is
    Linear(n,n)-ReLU-Linear(n,64) without bias (paper). With ``shared_encoder`` both views use one
    encoder and one head (SimCLR's layout).

    Args:
        in_channels: image channels.
        config: :class:`CLAWSConfig`.

    Examples:
        >>> model = CLAWS(3, CLAWSConfig(widths=(8, 16, 32)))
        >>> loss = model(torch.rand(4, 3, 16, 16), torch.rand(4, 3, 16, 16), torch.tensor([0, 0, 1, 1]))
    """

    def __init__(self, in_channels: int, config: CLAWSConfig | None = None):
        super().__init__()
        self.config = cfg = (config or CLAWSConfig()).validate()
        self.encoder_i, dim = build_encoder(in_channels, cfg)
        self.projector_i = ProjectionHead(dim, dim, cfg.projection_dim, bias=False)
        if cfg.shared_encoder:
            self.encoder_c, self.projector_c = self.encoder_i, self.projector_i
        else:
            self.encoder_c, _ = build_encoder(in_channels, cfg)
            self.projector_c = ProjectionHead(dim, dim, cfg.projection_dim, bias=False)
        self.gate = StraightThroughGate(dim) if cfg.mask == "feature" else None
        self.feat_dim = dim

    def features(self, x: torch.Tensor, branch: str = "image") -> torch.Tensor:
        """(B, C, H, W) -> (B, n) encoder features of one branch (the crop branch includes the gate)."""
        if branch == "image":
            return self.encoder_i(x)
        h = self.encoder_c(x)
        return self.gate(h) if self.gate is not None else h

    def branch_encoder(self, branch: str = "image") -> nn.Module:
        """The module that maps images to representations for ``branch`` ("image" or "crop")."""
        if branch == "image":
            return self.encoder_i
        return nn.Sequential(self.encoder_c, self.gate) if self.gate is not None else self.encoder_c

    def project(self, x_i: torch.Tensor, x_c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Projections (B, 64) of both views."""
        if self.config.shared_encoder and self.gate is None:
            # one pass, so BatchNorm sees both views together as in SimCLR
            z = self.projector_i(self.encoder_i(torch.cat([x_i, x_c])))
            return z[: len(x_i)], z[len(x_i) :]
        return self.projector_i(self.features(x_i, "image")), self.projector_c(
            self.features(x_c, "crop")
        )

    def forward(
        self,
        x_i: torch.Tensor,
        x_c: torch.Tensor,
        labels: torch.Tensor | None = None,
        gather_distributed: bool = False,
    ) -> torch.Tensor:
        """Loss of a batch of view pairs (B, C, H, W) with weak labels (B,)."""
        cfg = self.config
        z_i, z_c = self.project(x_i, x_c)
        if cfg.contrast == "all" or (cfg.contrast == "within" and cfg.within_class == "batch"):
            # "batch" mode: the sampler made the batch class-homogeneous, so every column is in-class
            return nt_xent(z_i, z_c, cfg.temperature, gather_distributed=gather_distributed)
        if labels is None:
            raise ValueError(f"contrast={cfg.contrast!r} needs the weak labels (B,)")
        if cfg.contrast == "supcon":
            return sup_con(
                torch.stack([z_i, z_c], 1),
                labels,
                cfg.supcon_temperature,
                cfg.supcon_temperature,
                gather_distributed=gather_distributed,
            )
        return within_class_nt_xent(z_i, z_c, labels, cfg.temperature, gather_distributed)
