"""ARIEL's training loop (Feng et al., WWW 2022, Algorithm 1): each epoch samples an induced
subgraph, builds two stochastic views and an adversarial view, and minimises

    L = L(z1, z2) + lam * L_info(z1, z2, z) + eps * L(z1, z_adv)

with Adam. ``eps = lam = 0`` is GRACE on sampled subgraphs (``sample_size=None``: on the full graph).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch_geometric.data import Data
from torch_geometric.utils import dropout_edge, subgraph
from tqdm.auto import tqdm

from graph_ext.adjacency import dense_adjacency, normalize_dense, normalized_adjacency
from graph_ext.attack import pgd_adversarial_view
from graph_ext.config import ARIELConfig
from graph_ext.loss import info_regularizer
from graph_ext.model import ARIEL

__all__ = [
    "mask_feature_columns",
    "sample_subgraph",
    "training_loss",
    "train",
    "embed_graph",
    "TrainResult",
]


def sample_subgraph(
    data: Data, size: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Induced subgraph on ``size`` nodes drawn uniformly from all nodes.

    Unlike the reference sampler, isolated nodes can be drawn (the reference walks edges and so
    never picks them). ``size`` >= N (or ``None``) takes the whole graph.

    Returns:
        ``(nodes (n,), edge_index (2, E_sub) relabelled to 0..n-1, x (n, F))``.
    """
    n = data.x.shape[0]
    if size is None or size >= n:
        nodes = torch.arange(n, device=data.x.device)
        return nodes, data.edge_index, data.x
    nodes = torch.randperm(n, device=data.x.device)[:size]
    edge_index, _ = subgraph(nodes, data.edge_index, relabel_nodes=True, num_nodes=n)
    return nodes, edge_index, data.x[nodes]


def mask_feature_columns(x: torch.Tensor, p: float) -> torch.Tensor:
    """Zero each feature column with probability ``p`` (GRACE's feature masking), (n, F) -> (n, F)."""
    keep = torch.rand(x.shape[1], device=x.device) >= p
    return x * keep.to(x.dtype)


def training_loss(
    model: ARIEL, edge_index: torch.Tensor, x: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    """ARIEL's objective on one (sub)graph.

    Args:
        model: the model; ``model.config`` holds the rates and weights.
        edge_index: (2, E) undirected edges of the (sub)graph, ids in ``[0, n)``.
        x: (n, F) features.

    Returns:
        ``(loss, parts)`` with the float values of each term.
    """
    c = model.config
    n = x.shape[0]
    views = []
    for de, df in zip(c.drop_edge, c.drop_feature, strict=True):
        ei, _ = dropout_edge(edge_index, p=de)
        views.append((mask_feature_columns(x, df), normalized_adjacency(ei, n)))
    z1 = model.embed_projected(*views[0])
    z2 = model.embed_projected(*views[1])
    contrast = model.loss(z1, z2)
    loss = contrast
    parts = {"contrast": contrast.item()}
    if c.eps > 0 or c.lam > 0:
        adj = dense_adjacency(edge_index, n)
    if c.eps > 0:
        budget = c.edge_budget_ratio * float(adj.triu(1).sum())
        adv = pgd_adversarial_view(
            model,
            z1,
            (adj, x),
            c.attack_steps,
            budget,
            c.alpha,
            c.beta,
            c.feature_eps,
            c.temperature,
        )
        adversarial = model.loss(z1, model.embed_projected(adv.x, normalize_dense(adv.adj)))
        loss = loss + c.eps * adversarial
        changed = (adv.adj - adj).triu(1)
        parts.update(
            adversarial=adversarial.item(),
            edges_added=float((changed > 0).sum()),
            edges_removed=float((changed < 0).sum()),
            edge_budget=budget,
        )
    if c.lam > 0:
        z = model.embed_projected(x, normalize_dense(adj))
        info = info_regularizer(z1, z2, z, c.temperature)
        loss = loss + c.lam * info
        parts["info"] = info.item()
    parts["loss"] = loss.item()
    return loss, parts


@torch.no_grad()
def embed_graph(model: ARIEL, data: Data) -> torch.Tensor:
    """Encoder output (N, h) on the full clean graph (sparse normalised adjacency)."""
    model.eval()
    adj = normalized_adjacency(data.edge_index, data.x.shape[0], sparse=True)
    z = model(data.x, adj)
    model.train()
    return z


@dataclass
class TrainResult:
    model: ARIEL
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def train(
    data: Data,
    config: ARIELConfig,
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: bool = False,
    desc: str = "ariel",
) -> TrainResult:
    """Train ARIEL (or GRACE) on a prepared graph (:func:`graph_ext.data.prepare_graph`)."""
    torch.manual_seed(seed)
    data = data.to(device)
    model = ARIEL(data.x.shape[1], config).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    result = TrainResult(model)
    start = time.perf_counter()
    bar = tqdm(range(config.epochs), desc=desc, disable=not progress, leave=False)
    for _ in bar:
        _, edge_index, x = sample_subgraph(data, config.sample_size)
        loss, parts = training_loss(model, edge_index, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        result.history.append(parts)
        bar.set_postfix(loss=f"{parts['loss']:.3f}")
    result.seconds = time.perf_counter() - start
    return result
