"""SimCLR (Chen et al., ICML 2020): encoder + 2-layer MLP projector + NT-Xent (eq. 1)."""

from __future__ import annotations

import torch
from torch import nn

from plugins.heads import ProjectionHead
from plugins.losses import nt_xent
from plugins.methods.simclr.config import SimCLRConfig

__all__ = ["SimCLR"]


class SimCLR(nn.Module):
    """Encoder + projector. ``forward(x1, x2) -> loss``; ``encoder`` is what downstream tasks use."""

    def __init__(self, encoder: nn.Module, feat_dim: int, config: SimCLRConfig | None = None):
        super().__init__()
        self.config = config or SimCLRConfig()
        self.encoder = encoder
        self.projector = ProjectionHead(feat_dim, feat_dim, self.config.projection_dim)

    def forward(
        self, x1: torch.Tensor, x2: torch.Tensor, gather_distributed: bool = False
    ) -> torch.Tensor:
        z = self.projector(self.encoder(torch.cat([x1, x2])))
        z1, z2 = z.chunk(2)
        return nt_xent(z1, z2, self.config.temperature, gather_distributed=gather_distributed)
