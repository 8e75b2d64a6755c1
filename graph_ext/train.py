"""ARIEL's training loop (Feng et al., WWW 2022, Algorithm 1): each epoch samples an induced
subgraph, builds two stochastic views and an adversarial view, and minimises

    L = L(z1, z2) + lam * L_info(z1, z2, z) + eps * L(z1, z_adv)

with Adam. ``eps = lam = 0`` is GRACE on sampled subgraphs (``sample_size=None``: on the full graph).
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch_geometric.data import Data
from torch_geometric.utils import dropout_edge, subgraph

from graph_ext.adjacency import dense_adjacency, normalized_adjacency
from graph_ext.attack import pgd_adversarial_view
from graph_ext.config import ARIELConfig
from graph_ext.loss import info_regularizer
from graph_ext.model import ARIEL
from plugins.errors import check_finite_loss
from plugins.progress import progress_bar

__all__ = [
    "mask_feature_columns",
    "sample_subgraph",
    "sample_weighted_subgraph",
    "select_rows",
    "sparse_features",
    "dense_features",
    "training_loss",
    "train",
    "embed_graph",
    "TrainResult",
    "StallWatch",
]


def sample_subgraph(
    data: Data, size: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Induced subgraph on ``size`` nodes drawn uniformly from all nodes.

    Unlike the reference sampler, isolated nodes can be drawn (the reference walks edges and so
    never picks them). ``size`` >= N (or ``None``) takes the whole graph. The draw uses the global
    torch RNG of ``data``'s device, which :class:`plugins.checkpoint.Checkpointer` saves, so a
    resumed run samples the same subgraphs. Sparse CSR features stay sparse for the full graph;
    only the subgraph's rows are made dense (n x F, e.g. 500 x 8,415 = 17 MB on Physics).

    Returns:
        ``(nodes (n,), edge_index (2, E_sub) relabelled to 0..n-1, x (n, F) dense)``; the
        subgraph's edge weights are the last item of :func:`sample_weighted_subgraph`.
    """
    return sample_weighted_subgraph(data, size)[:3]


def sample_weighted_subgraph(
    data: Data, size: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """:func:`sample_subgraph` plus the subgraph's ``edge_weight`` (E_sub,) (``None`` when
    ``data`` has none): the same draw."""
    n = data.x.shape[0]
    weight = data.edge_weight if "edge_weight" in data else None
    if size is None or size >= n:
        nodes = torch.arange(n, device=data.x.device)
        return nodes, data.edge_index, dense_features(data.x), weight
    nodes = torch.randperm(n, device=data.x.device)[:size]
    edge_index, weight = subgraph(nodes, data.edge_index, weight, relabel_nodes=True, num_nodes=n)
    if data.x.layout == torch.strided:
        return nodes, edge_index, data.x[nodes], weight
    return nodes, edge_index, dense_features(select_rows(sparse_features(data.x), nodes)), weight


def dense_features(x: torch.Tensor) -> torch.Tensor:
    """``x`` as a dense tensor (sparse CSR/COO are densified, dense returned as is)."""
    if x.layout == torch.strided:
        return x
    with _quiet_csr():
        return x.to_dense()


@contextmanager
def _quiet_csr() -> Iterator[None]:
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support", category=UserWarning)
        yield


def sparse_features(x: torch.Tensor, max_density: float = 0.1) -> torch.Tensor | None:
    """A sparse CSR copy of the (N, F) features if at most ``max_density`` of them are non-zero.

    Bag-of-words features (Cora 1.3%, CiteSeer 0.9% non-zero) then enter ``X W_1`` as sparse
    products; the result is the same matrix. Returns ``None`` for dense-enough features.
    """
    if x.layout != torch.strided:
        return x.to_sparse_csr() if x.layout != torch.sparse_csr else x
    if x.numel() == 0 or torch.count_nonzero(x) > max_density * x.numel():
        return None
    with _quiet_csr():
        return x.to_sparse_csr()


def select_rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Rows ``rows`` of a sparse CSR matrix, as a CSR matrix (``x[rows]`` without densifying)."""
    crow, col, val = x.crow_indices(), x.col_indices(), x.values()
    start = crow[rows]
    count = crow[rows + 1] - start
    new_crow = torch.zeros(rows.numel() + 1, dtype=crow.dtype, device=crow.device)
    torch.cumsum(count, 0, out=new_crow[1:])
    nnz = int(new_crow[-1])
    index = torch.repeat_interleave(start - new_crow[:-1], count, output_size=nnz)
    index = index + torch.arange(nnz, dtype=index.dtype, device=index.device)
    with _quiet_csr():
        return torch.sparse_csr_tensor(
            new_crow, col[index], val[index], (rows.numel(), x.shape[1]), check_invariants=False
        )


def mask_feature_columns(x: torch.Tensor, p: float) -> torch.Tensor:
    """Zero each feature column with probability ``p`` (GRACE's feature masking), (n, F) -> (n, F).

    ``x`` may be dense or sparse CSR (the result has the same layout; same random draw).
    """
    keep = (torch.rand(x.shape[1], device=x.device) >= p).to(x.dtype)
    if x.layout == torch.strided:
        return x * keep
    col = x.col_indices()
    with _quiet_csr():
        return torch.sparse_csr_tensor(
            x.crow_indices(), col, x.values() * keep[col], x.shape, check_invariants=False
        )


def training_loss(
    model: ARIEL,
    edge_index: torch.Tensor,
    x: torch.Tensor,
    x_sparse: torch.Tensor | None = None,
    edge_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """ARIEL's objective on one (sub)graph (Feng et al., WWW 2022, Sec. 4, Algorithm 1).

    ``L = L(z1, z2) + eps * L(z1, z_adv) + lam * L_info(z1, z2, z)``: two stochastic views
    (edge dropping, feature-column masking), the PGD adversarial view of the clean (sub)graph
    (:func:`graph_ext.attack.pgd_adversarial_view`) and the information regulariser. The views'
    GCN normalisations are sparse matrices; the attack perturbs the dense one.

    With ``model.config.directed`` every adjacency uses the directed normalisation and the attack
    flips ordered pairs; with ``edge_weight`` a dropped edge takes its weight along and the attack
    perturbs the weighted adjacency (:mod:`graph_ext.attack`).

    Args:
        model: the model; ``model.config`` holds the rates and weights.
        edge_index: (2, E) edges of the (sub)graph (undirected unless ``config.directed``), ids in
            ``[0, n)``.
        x: (n, F) dense features.
        x_sparse: optional sparse CSR copy of ``x`` (:func:`sparse_features`, :func:`select_rows`);
            the feature products are then sparse. Same value (up to rounding) and random draws.
        edge_weight: optional (E,) non-negative weights (the GCN's ``edge_weight``).

    Returns:
        ``(loss, parts)`` with the float values of each term.
    """
    c = model.config
    n = x.shape[0]
    directed = c.directed
    feats = x if x_sparse is None else x_sparse
    views = []
    for de, df in zip(c.drop_edge, c.drop_feature, strict=True):
        ei, kept = dropout_edge(edge_index, p=de)
        w = None if edge_weight is None else edge_weight[kept]
        adj_view = normalized_adjacency(ei, n, sparse=True, edge_weight=w, directed=directed)
        views.append((mask_feature_columns(feats, df), adj_view))
    z1 = model.embed_projected(*views[0])
    z2 = model.embed_projected(*views[1])
    contrast = model.loss(z1, z2)
    loss = contrast
    parts: dict[str, torch.Tensor | float] = {"contrast": contrast.detach()}
    if c.eps > 0 or c.lam > 0:
        adj = dense_adjacency(edge_index, n, edge_weight=edge_weight)
    if c.eps > 0:
        edges = adj != 0  # undirected: pairs of the upper triangle; directed: ordered pairs
        budget = c.edge_budget_ratio * float(edges.sum() if directed else edges.triu(1).sum())
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
            x_sparse=x_sparse,
            directed=directed,
        )
        dst, src = adv.adj.nonzero().T  # adj[dst, src] -> (src, dst)
        adv_weight = None if edge_weight is None else adv.adj[dst, src]
        z_adv = model.embed_projected_from_linear(
            model.first_linear(feats, adv.delta),  # (X + delta) W_1
            normalized_adjacency(
                torch.stack([src, dst]), n, sparse=True, edge_weight=adv_weight, directed=directed
            ),
        )
        adversarial = model.loss(z1, z_adv)
        loss = loss + c.eps * adversarial
        changed = adv.adj - adj  # zero diagonal; undirected: symmetric, every pair counted twice
        per_pair = 1 if directed else 2
        parts.update(
            adversarial=adversarial.detach(),
            edges_added=(changed > 0).sum() / per_pair,
            edges_removed=(changed < 0).sum() / per_pair,
            edge_budget=budget,
        )
    if c.lam > 0:
        clean = normalized_adjacency(
            edge_index, n, sparse=True, edge_weight=edge_weight, directed=directed
        )
        z = model.embed_projected(feats, clean)
        info = info_regularizer(z1, z2, z, c.temperature)
        loss = loss + c.lam * info
        parts["info"] = info.detach()
    parts["loss"] = loss.detach()
    keys = [k for k, v in parts.items() if isinstance(v, torch.Tensor)]
    values = torch.stack([parts[k].to(torch.float64) for k in keys]).tolist()  # one host sync
    return loss, {**parts, **dict(zip(keys, values, strict=True))}


@torch.no_grad()
def embed_graph(model: ARIEL, data: Data, dense: bool = False) -> torch.Tensor:
    """Encoder output (N, h) on the full clean graph, in memory linear in nodes + edges.

    The normalised adjacency is sparse (N + E entries, never N x N) and sparse CSR features stay
    sparse, so ``X W_1`` is a sparse product: on Coauthor-Physics (34,493 nodes, 8,415 features)
    the largest tensors are the (N, 2h) activations. ``dense=True`` is the literal reference path
    (dense features, dense N x N adjacency), kept for the equivalence test on small graphs.
    ``data.edge_weight`` (when present) and ``model.config.directed`` enter the normalisation as in
    training.
    """
    model.eval()
    n = data.x.shape[0]
    norm = {
        "edge_weight": data.edge_weight if "edge_weight" in data else None,
        "directed": model.config.directed,
    }
    if dense:
        adj = normalized_adjacency(data.edge_index, n, sparse=False, **norm)
        z = model(dense_features(data.x), adj)
    else:
        adj = normalized_adjacency(data.edge_index, n, sparse=True, **norm)
        x = data.x if data.x.layout == torch.strided else sparse_features(data.x)
        z = model(x, adj)
    model.train()
    return z


@dataclass
class TrainResult:
    model: ARIEL
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def stalled_epochs(self) -> int:
        """Epochs whose contrastive term sat at its value for identical projections (see
        :class:`StallWatch`)."""
        return sum(1 for h in self.history if h.get("stalled"))


class StallWatch:
    """Flags epochs where every node has the same projection: GRACE's term then equals
    log(2n - 1) exactly (each positive pair weighs as much as the 2n - 2 negatives), and no
    gradient separates the nodes. Dead first-layer ReLUs after a too-large first Adam step do this
    (Amazon-Photo at the authors' lr 0.1: from epoch 2 to about 500). Warns once, after
    ``patience`` such epochs in a row, naming the epoch and the remedy."""

    def __init__(self, patience: int = 20, tol: float = 1e-3):
        self.patience, self.tol = patience, tol
        self.run = 0
        self.warned = False

    def update(self, contrast: float, n: int, epoch: int, lr: float) -> bool:
        stalled = n > 1 and abs(contrast - math.log(2 * n - 1)) < self.tol
        self.run = self.run + 1 if stalled else 0
        if self.run >= self.patience and not self.warned:
            self.warned = True
            warnings.warn(
                f"the contrastive loss has sat at log(2n - 1) = {math.log(2 * n - 1):.3f} since "
                f"epoch {epoch + 2 - self.run}: every node gets the same projection, the encoder's "
                f"units are dead and the embedding carries nothing; it may revive after hundreds "
                f"of epochs or never. Lower the learning rate (now --set lr={lr:g}).",
                stacklevel=3,
            )
        return stalled


def train(
    data: Data,
    config: ARIELConfig,
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: bool = False,
    desc: str = "ariel",
    checkpointer: Any = None,
    autocast: Any = None,
) -> TrainResult:
    """Train ARIEL (or GRACE) on a prepared graph (:func:`graph_ext.data.prepare_graph`, with the
    same ``directed`` / ``weighted`` as ``config``; ``data.edge_weight`` is used when present).

    ``autocast``: a context for the forward passes (``plugins.engine_settings.autocast(ctx)`` for
    ``--precision bf16-mixed``); the losses stay in float32.

    One step is one epoch (one sampled subgraph). All randomness (subgraph, edge dropping, feature
    masking) comes from the global torch RNG, so a :class:`plugins.checkpoint.Checkpointer` (e.g.
    ``ctx.checkpointer()``) that saves the model, the optimiser and the history every few epochs
    lets ``--resume`` reach the same final parameters as an uninterrupted run.
    """
    torch.manual_seed(seed)
    data = data.to(device)
    model = ARIEL(data.x.shape[1], config).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    result = TrainResult(model)
    clock = {"seconds": 0.0}  # training time of earlier, interrupted sessions
    state = {"model": model, "opt": opt, "history": result.history, "clock": clock}
    first = checkpointer.restore(config.epochs, **state) if checkpointer is not None else 0
    before = clock["seconds"]
    start = time.perf_counter()
    features = sparse_features(data.x)  # CSR copy of bag-of-words features, else None
    stall = StallWatch()
    with progress_bar(
        total=config.epochs, initial=first, desc=desc, show=progress, unit="epoch"
    ) as bar:
        for epoch in range(first, config.epochs):
            nodes, edge_index, x, weight = sample_weighted_subgraph(data, config.sample_size)
            x_sparse = None if features is None else select_rows(features, nodes)
            with autocast if autocast is not None else contextlib.nullcontext():
                loss, parts = training_loss(model, edge_index, x, x_sparse, weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            check_finite_loss(parts["loss"], epoch)
            parts["stalled"] = stall.update(parts["contrast"], x.shape[0], epoch, config.lr)
            result.history.append(parts)
            bar.update()
            bar.set_postfix(epoch=epoch + 1, loss=f"{parts['loss']:.3f}", refresh=False)
            if checkpointer is not None:
                clock["seconds"] = before + time.perf_counter() - start
                checkpointer.step(epoch + 1, **state)
    result.seconds = before + time.perf_counter() - start
    return result
