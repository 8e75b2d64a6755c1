"""ARIEL's networks: a two-layer GCN encoder and GRACE's projector (Zhu et al., 2020, Sec. 4;
Feng et al., WWW 2022, Sec. 5.1)."""

from __future__ import annotations

import torch
from torch import nn

from graph_ext.adjacency import DenseWithSparseCopy, adjacency_matmul
from graph_ext.config import ARIELConfig
from graph_ext.loss import grace_loss

__all__ = ["GCNEncoder", "ARIEL"]


class GCNLayer(nn.Module):
    """``A_norm @ X W + b`` (Kipf & Welling, eq. 2; bias after aggregation, as ``GCNConv``).

    ``A_norm`` may be dense or sparse (COO/CSR); ``X`` may be dense or a sparse CSR/COO matrix
    (bag-of-words features such as Cora's are ~1% non-zero, so ``X W`` is then a sparse product).
    """

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.lin = nn.Linear(in_dim, out_dim, bias=False)
        self.bias = nn.Parameter(torch.zeros(out_dim))
        nn.init.xavier_uniform_(self.lin.weight)

    def transform(self, x: torch.Tensor, delta: torch.Tensor | None = None) -> torch.Tensor:
        """``(X + delta) W`` (n, out); a sparse ``X`` is multiplied sparsely, ``delta`` is dense."""
        if x.layout == torch.strided:
            return self.lin(x if delta is None else x + delta)
        h = x @ self.lin.weight.T
        return h if delta is None else h + delta @ self.lin.weight.T

    def aggregate(self, h: torch.Tensor, adj: torch.Tensor | DenseWithSparseCopy) -> torch.Tensor:
        """``A_norm @ h + b``."""
        return adjacency_matmul(adj, h) + self.bias

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        return self.aggregate(self.transform(x), adj)


class GCNEncoder(nn.Module):
    """k = 2 GCN layers, widths 2h then h, activation after every layer.

    Args:
        in_dim: feature width F.
        hidden: h.
        activation: ``"relu"``, ``"prelu"`` (one single-slope PReLU per layer) or ``"rrelu"``.
    """

    def __init__(self, in_dim: int, hidden: int, activation: str = "relu"):
        super().__init__()
        self.layers = nn.ModuleList([GCNLayer(in_dim, 2 * hidden), GCNLayer(2 * hidden, hidden)])
        make = {"prelu": nn.PReLU, "rrelu": nn.RReLU}.get(activation, nn.ReLU)
        self.acts = nn.ModuleList([make(), make()])

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        """x (N, F) dense or sparse, adj (N, N) normalised -> (N, h)."""
        return self.propagate(self.layers[0].transform(x), adj)

    def propagate(self, h0: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        """The encoder from the first layer's linear output ``h0 = X W_1`` (N, 2h) on."""
        h = self.acts[0](self.layers[0].aggregate(h0, adj))
        for layer, act in zip(self.layers[1:], self.acts[1:], strict=True):
            h = act(layer(h, adj))
        return h


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
        """``project(encoder(x, adj))`` (N, h): the embedding that enters the loss."""
        return self.project(self(x, adj))

    def first_linear(self, x: torch.Tensor, delta: torch.Tensor | None = None) -> torch.Tensor:
        """``(X + delta) W_1`` (N, 2h), the first GCN layer before aggregation.

        With a sparse ``X`` this is ``X W_1`` as a sparse product plus ``delta W_1``; the PGD attack
        (ARIEL Sec. 4.2) computes ``X W_1`` once and differentiates with respect to this output.
        """
        return self.encoder.layers[0].transform(x, delta)

    @property
    def first_weight(self) -> torch.Tensor:
        """W_1 as stored by ``nn.Linear``: (2h, F), so ``first_linear(x) = x @ W_1.T``."""
        return self.encoder.layers[0].lin.weight

    def embed_projected_from_linear(self, h0: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        """``embed_projected`` given ``h0 = first_linear(x, delta)`` (N, 2h) instead of ``x``."""
        return self.project(self.encoder.propagate(h0, adj))

    def loss(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        """GRACE loss between two (N, h) projections at the configured temperature."""
        return grace_loss(z1, z2, self.config.temperature)
