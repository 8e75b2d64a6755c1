"""ARIEL's networks: a two-layer GCN encoder and GRACE's projector (Zhu et al., 2020, Sec. 4;
Feng et al., WWW 2022, Sec. 5.1)."""

from __future__ import annotations

import torch
from torch import nn

from graph_ext.config import ARIELConfig
from graph_ext.loss import grace_loss

__all__ = ["GCNEncoder", "ARIEL"]


class GCNLayer(nn.Module):
    """``act(A_norm @ X W + b)``; ``A_norm`` dense or sparse (bias after aggregation, as ``GCNConv``)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.lin = nn.Linear(in_dim, out_dim, bias=False)
        self.bias = nn.Parameter(torch.zeros(out_dim))
        nn.init.xavier_uniform_(self.lin.weight)

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        h = torch.sparse.mm(adj, h) if adj.is_sparse else adj @ h
        return h + self.bias


class GCNEncoder(nn.Module):
    """k = 2 GCN layers, widths 2h then h, activation after every layer.

    Args:
        in_dim: feature width F.
        hidden: h.
        activation: ``"relu"`` or ``"prelu"`` (one single-slope PReLU per layer).
    """

    def __init__(self, in_dim: int, hidden: int, activation: str = "relu"):
        super().__init__()
        self.layers = nn.ModuleList([GCNLayer(in_dim, 2 * hidden), GCNLayer(2 * hidden, hidden)])
        make = nn.PReLU if activation == "prelu" else nn.ReLU
        self.acts = nn.ModuleList([make(), make()])

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        """x (N, F), adj (N, N) normalised -> (N, h)."""
        for layer, act in zip(self.layers, self.acts, strict=True):
            x = act(layer(x, adj))
        return x


class ARIEL(nn.Module):
    """ARIEL / GRACE model: GCN encoder + projector ``fc2(elu(fc1(z)))`` (h -> p -> h) + the loss.

    Args:
        in_dim: node feature width.
        config: hyperparameters (:class:`graph_ext.config.ARIELConfig`).

    Examples:
        >>> from graph_ext.config import ARIELConfig
        >>> model = ARIEL(16, ARIELConfig(hidden=8, proj_hidden=8))
        >>> adj = torch.eye(5)
        >>> h = model(torch.randn(5, 16), adj)             # (5, 8) node embeddings
        >>> loss = model.loss(model.project(h), model.project(h))
    """

    def __init__(self, in_dim: int, config: ARIELConfig | None = None):
        super().__init__()
        self.config = config or ARIELConfig()
        c = self.config
        self.encoder = GCNEncoder(in_dim, c.hidden, c.activation)
        self.fc1 = nn.Linear(c.hidden, c.proj_hidden)
        self.fc2 = nn.Linear(c.proj_hidden, c.hidden)

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        """Node embeddings (N, h) used downstream."""
        return self.encoder(x, adj)

    def project(self, h: torch.Tensor) -> torch.Tensor:
        """(N, h) -> (N, h) projections that enter the loss."""
        return self.fc2(nn.functional.elu(self.fc1(h)))

    def embed_projected(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        return self.project(self(x, adj))

    def loss(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        """GRACE loss between two (N, h) projections at the configured temperature."""
        return grace_loss(z1, z2, self.config.temperature)
