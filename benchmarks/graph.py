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

It also prints a **floor**: the dense products that any implementation of the epoch must compute
(:func:`dense_macs_lower_bound`, counted from the algorithm, not from our code) divided by this
machine's dense GEMM rate measured in the same run. ``literal / floor`` is the largest speed-up any
implementation could show against the literal one here.
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


def dense_macs_lower_bound(n: int, features: int, cfg) -> float:
    """Multiply-adds of the dense products one ARIEL epoch cannot avoid, on an n-node subgraph.

    Counted from the algorithm (ARIEL Sec. 4; GCN widths F -> 2h -> h, projector h -> p -> h),
    only the terms that stay dense whatever the implementation, and each at its cheapest:

    * per PGD step t: ``delta W_1`` (t >= 1; delta is dense), the feature gradient ``G W_1``
      (dense n x F for its sign), ``dL/dA`` of both GCN layers (every pair of the relaxed
      adjacency has a gradient: n^2 (2h + h)), the similarity to the fixed view and its gradient
      (2 n^2 h), and the second layer and projector forward and backward;
    * training: the two symmetrised losses over 2n embeddings (forward and one backward product
      each: 2 x 8 n^2 h), the adversarial view's ``delta W_1`` and its weight gradient, and the
      second layer and projector of the three views, forward and backward.
    """
    f, h2, h, p, t = features, 2 * cfg.hidden, cfg.hidden, cfg.proj_hidden, cfg.attack_steps
    small = 2 * n * h2 * h + 4 * n * h * p  # layer 2 + projector, forward and backward
    attack = (2 * t - 1) * n * f * h2 + t * (n * n * (h2 + h) + 2 * n * n * h + small)
    training = 16 * n * n * h + 2 * n * f * h2 + 3 * small
    return float(attack + training)


def gemm_rate(n: int, features: int, hidden2: int, repeats: int = 10) -> float:
    """Best-of-``repeats`` dense multiply-adds per second of the attack's (n, 2h) @ (2h, F) shape."""
    a, b = torch.randn(n, hidden2), torch.randn(hidden2, features)
    a @ b
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return n * hidden2 * features / best


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
        f" {'floor s/epoch':>14} {'max speed-up':>13}"
    )
    for size in args.sizes:
        name = "cora" if size <= 2708 else "citeseer"
        data = prepare_graph(load_graph(name)[0])
        time_epochs(ours_training_loss, data, min(size, 200), 1, args.seed)  # warm-up
        epochs = args.epochs or (3 if size <= 1000 else 1)
        ours = time_epochs(ours_training_loss, data, size, epochs, args.seed)
        literal = time_epochs(literal_epoch, data, size, epochs, args.seed)
        floor = dense_macs_lower_bound(size, data.x.shape[1], config_for("cora")) / gemm_rate(
            size, data.x.shape[1], 2 * config_for("cora").hidden
        )
        print(
            f"{name:>10} {size:>6} {ours:>13.3f} {literal:>16.3f} {literal / ours:>8.1f}x"
            f" {floor:>14.3f} {literal / floor:>12.1f}x",
            flush=True,
        )


if __name__ == "__main__":
    main()
