"""ARIEL training-epoch time: our implementation vs a deliberately literal one.

The literal version keeps three choices of the reference code that ours avoids:

1. GCN normalisation as two dense N x N products, ``diag(d) @ (A + I) @ diag(d)``;
2. PGD re-embeds the (constant) view-1 graph at every step;
3. the budget projection bisects in a Python ``while`` loop on host-side scalars (``.item()`` per
   iteration, Xu et al.'s tolerance 1e-5), on the full N x N flip matrix.

Both run the same epoch (same seed, subgraph, views and hyperparameters: the authors' Cora
configuration) and this script prints the time per epoch and the ratio. Ours runs as
``graph_ext.train.train`` does: the sparse CSR copy of the bag-of-words features is made once per
run and its rows are selected inside each timed epoch; the literal version multiplies the dense
features, as the reference code does. Usage::

    OMP_NUM_THREADS=1 python benchmarks/graph.py [--sizes 500 3000] [--epochs N]

Sizes above Cora's 2,708 nodes sample from CiteSeer (3,327 nodes). Not a test: no timed asserts.
"""

from __future__ import annotations

import argparse
import math
import time
import warnings

import torch
from torch_geometric.utils import dropout_edge

from graph_ext.adjacency import dense_adjacency
from graph_ext.config import config_for
from graph_ext.data import load_graph, prepare_graph
from graph_ext.model import ARIEL
from graph_ext.train import (
    mask_feature_columns,
    sample_subgraph,
    select_rows,
    sparse_features,
    training_loss,
)


def literal_normalize(adj: torch.Tensor) -> torch.Tensor:
    a_hat = adj + torch.eye(adj.shape[0])
    d = torch.diag(a_hat.sum(1).pow(-0.5))
    return d @ a_hat @ d


def literal_project(s: torch.Tensor, budget: float, eps: float = 1e-5) -> torch.Tensor:
    """Bisection on host scalars, as in the PGD topology-attack reference."""
    if torch.clamp(s, 0, 1).sum().item() <= budget:
        return torch.clamp(s, 0, 1)

    def f(mu: float) -> float:
        return torch.clamp(s - mu, 0, 1).sum().item() - budget

    a, b = (s - 1).min().item(), s.max().item()
    mu = (a + b) / 2
    while b - a > eps:
        mu = (a + b) / 2
        fm = f(mu)
        if fm == 0:
            break
        if fm * f(a) > 0:
            a = mu
        else:
            b = mu
    return torch.clamp(s - mu, 0, 1)


def literal_attack(model: ARIEL, x1, adj1, adj, x, budget: float):
    c = model.config
    n = adj.shape[0]
    s = torch.zeros(n, n)
    delta = torch.zeros_like(x)
    for t in range(c.attack_steps):
        z1 = model.embed_projected(x1, literal_normalize(adj1)).detach()  # recomputed every step
        s.requires_grad_(True)
        delta.requires_grad_(True)
        upper = torch.triu(s, diagonal=1)
        sym = upper + upper.T
        pert = adj + sym * (torch.ones(n, n) - 2 * adj - torch.eye(n))
        loss = model.loss(z1, model.embed_projected(x + delta, literal_normalize(pert)))
        gs, gd = torch.autograd.grad(loss, [s, delta])
        with torch.no_grad():
            s = s + c.alpha / math.sqrt(t + 1) * torch.triu(gs, diagonal=1)
            s = torch.triu(literal_project(s, budget), diagonal=1)
            delta = torch.clamp(delta + c.beta * gd.sign(), -c.feature_eps, c.feature_eps)
    flips = torch.bernoulli(s.detach())
    sym = flips + flips.T
    return adj + sym * (torch.ones(n, n) - 2 * adj - torch.eye(n)), x + delta.detach()


def literal_training_loss(model: ARIEL, edge_index: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    c = model.config
    n = x.shape[0]
    views = []
    for de, df in zip(c.drop_edge, c.drop_feature, strict=True):
        ei, _ = dropout_edge(edge_index, p=de)
        views.append((mask_feature_columns(x, df), dense_adjacency(ei, n)))
    z1 = model.embed_projected(views[0][0], literal_normalize(views[0][1]))
    z2 = model.embed_projected(views[1][0], literal_normalize(views[1][1]))
    adj = dense_adjacency(edge_index, n)
    budget = c.edge_budget_ratio * float(adj.triu(1).sum())
    adj_adv, x_adv = literal_attack(model, views[0][0], views[0][1], adj, x, budget)
    z_adv = model.embed_projected(x_adv, literal_normalize(adj_adv))
    return model.loss(z1, z2) + c.eps * model.loss(z1, z_adv)


def ours_training_loss(model: ARIEL, edge_index, x, nodes, features) -> torch.Tensor:
    """Our epoch as ``graph_ext.train.train`` runs it: sparse feature rows when X is sparse."""
    x_sparse = None if features is None else select_rows(features, nodes)
    return training_loss(model, edge_index, x, x_sparse)[0]


def literal_epoch(model: ARIEL, edge_index, x, nodes, features) -> torch.Tensor:
    return literal_training_loss(model, edge_index, x)


def time_epochs(fn, data, size: int, epochs: int, seed: int) -> float:
    cfg = config_for("cora", sample_size=size)
    torch.manual_seed(seed)
    model = ARIEL(data.x.shape[1], cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    torch.manual_seed(seed + 1)
    batches = [sample_subgraph(data, size) for _ in range(epochs)]
    features = sparse_features(data.x) if fn is ours_training_loss else None  # once per run
    start = time.perf_counter()
    for nodes, edge_index, x in batches:
        loss = fn(model, edge_index, x, nodes, features)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 3000])
    parser.add_argument(
        "--epochs", type=int, default=None, help="timed epochs (3 up to 1,000 nodes, else 1)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, Cora configuration (h=128, T=5)"
    )
    print(
        f"{'graph':>10} {'nodes':>6} {'ours s/epoch':>13} {'literal s/epoch':>16} {'speed-up':>9}"
    )
    for size in args.sizes:
        name = "cora" if size <= 2708 else "citeseer"
        data = prepare_graph(load_graph(name)[0])
        time_epochs(ours_training_loss, data, min(size, 200), 1, args.seed)  # warm-up
        epochs = args.epochs or (3 if size <= 1000 else 1)
        ours = time_epochs(ours_training_loss, data, size, epochs, args.seed)
        literal = time_epochs(literal_epoch, data, size, epochs, args.seed)
        print(f"{name:>10} {size:>6} {ours:>13.3f} {literal:>16.3f} {literal / ours:>8.1f}x")


if __name__ == "__main__":
    main()
