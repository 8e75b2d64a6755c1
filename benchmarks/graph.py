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

``--scaling`` adds the cost-against-size items of issue #23 (each measured in a fresh child
process, so its peak memory is its own; the peak is the resident set's high-water mark, reset by
``/proc/self/clear_refs`` after the graph is loaded, so it counts what the measured step adds):

* epoch time and peak memory at subgraph sizes ``--scaling-sizes`` (500, 3,000, 10,000) on
  Coauthor-Physics with the authors' Physics configuration, ours beside the literal epoch where
  the literal one's dense n x n matrices fit in ``--max-literal-gb``, and beside the floor;
* full-graph embedding time and peak memory on the four Amazon / Coauthor graphs: ours (sparse
  features, sparse adjacency) beside the literal dense one (dense features, dense N x N
  adjacency) where that fits;
* power-law exponents fitted by least squares in log-log: epoch time and memory against subgraph
  nodes, embedding time and memory against nodes and against edges.

Usage: ``OMP_NUM_THREADS=1 python benchmarks/graph.py --scaling [--scaling-sizes 500 3000]``.

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


LARGE_GRAPHS = ("amazon-photo", "amazon-computers", "coauthor-cs", "coauthor-physics")


def _rss_mb(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process in MB, from /proc/self/status."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> bool:
    """Reset this process's peak-RSS mark (Linux ``clear_refs`` 5); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _measure(
    task: str, name: str, size: int, literal: bool, seed: int, repeats: int, queue
) -> None:
    """Child process: load ``name``, reset the peak, time ``task`` (best of ``repeats``), report
    (seconds, extra MB, peak MB)."""
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    from graph_ext.train import embed_graph

    data = prepare_graph(load_graph(name)[0])
    cfg = config_for(name, sample_size=size or None)
    torch.manual_seed(seed)
    model = ARIEL(data.x.shape[1], cfg)
    if task == "epoch":
        torch.manual_seed(seed + 1)
        nodes, edge_index, x = sample_subgraph(data, size)
        features = sparse_features(data.x) if not literal else None
        if literal:  # the reference path multiplies the dense feature rows
            x = x.clone()
    base = _rss_mb("VmRSS")
    ok = _reset_peak()
    seconds = math.inf
    for _ in range(repeats):  # best of ``repeats``: the machine is shared
        start = time.perf_counter()
        if task == "epoch":
            opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
            fn = literal_epoch if literal else ours_training_loss
            loss = fn(model, edge_index, x, nodes, features)
            opt.zero_grad()
            loss.backward()
            opt.step()
        else:
            embed_graph(model, data, dense=literal)
        seconds = min(seconds, time.perf_counter() - start)
    peak = _rss_mb("VmHWM")
    queue.put((seconds, (peak - base) if ok else float("nan"), peak))


def measure(
    task: str, name: str, size: int = 0, literal: bool = False, seed: int = 0, repeats: int = 1
):
    """(seconds, extra peak MB over the loaded graph, total peak MB) of one ``task`` in a child."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_measure, args=(task, name, size, literal, seed, repeats, queue))
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        print(f"  ({task} {name} {size or ''} literal={literal}: child exit {proc.exitcode})")
        return (float("nan"),) * 3
    return queue.get()


def fit_exponent(xs, ys) -> float:
    """Least-squares slope of log(y) against log(x): y ~ x^slope."""
    import numpy as np

    xs, ys = np.log(np.asarray(xs, float)), np.log(np.asarray(ys, float))
    ok = np.isfinite(ys)
    if ok.sum() < 2:
        return float("nan")
    return float(np.polyfit(xs[ok], ys[ok], 1)[0])


def literal_gb(task: str, n: int) -> float:
    """Rough GB of the literal path's dense n x n float32 matrices (about 12 live at once in an
    epoch's PGD step and its backward, 5 for the full-graph embedding: A, A + I, I, and the
    two scalings)."""
    return (12 if task == "epoch" else 5) * n * n * 4 / 1e9


def scaling(args) -> None:
    if "epoch" in args.scaling_parts:
        scaling_epochs(args)
    if "embed" in args.scaling_parts:
        scaling_embedding(args)


def scaling_epochs(args) -> None:
    print("\n== epoch cost against subgraph size: coauthor-physics, authors' Physics configuration")
    data = prepare_graph(load_graph("coauthor-physics")[0])
    cfg = config_for("coauthor-physics")
    rate = gemm_rate(min(args.scaling_sizes), data.x.shape[1], 2 * cfg.hidden)
    print(
        f"{'nodes':>6} {'ours s':>8} {'ours MB':>8} {'literal s':>10} {'literal MB':>11}"
        f" {'floor s':>8}"
    )
    ours_t, ours_m = [], []
    for size in args.scaling_sizes:
        reps = 3 if size <= 1000 else 1  # best of 3 where an epoch is short (first one warms up)
        t, mb, _ = measure("epoch", "coauthor-physics", size, seed=args.seed, repeats=reps)
        if literal_gb("epoch", size) <= args.max_literal_gb:
            lt, lmb, _ = measure(
                "epoch", "coauthor-physics", size, literal=True, seed=args.seed, repeats=reps
            )
            lit = f"{lt:>10.2f} {lmb:>11.0f}"
        else:
            lit = f"{'(~' + format(literal_gb('epoch', size), '.0f') + ' GB)':>10} {'skipped':>11}"
        floor = dense_macs_lower_bound(size, data.x.shape[1], cfg) / rate
        ours_t.append(t)
        ours_m.append(mb)
        print(f"{size:>6} {t:>8.2f} {mb:>8.0f} {lit} {floor:>8.2f}", flush=True)
    print(
        f"exponents (ours): time ~ n^{fit_exponent(args.scaling_sizes, ours_t):.2f}, "
        f"peak memory ~ n^{fit_exponent(args.scaling_sizes, ours_m):.2f}"
    )


def scaling_embedding(args) -> None:
    print(
        "\n== full-graph embedding (test time), untrained model, authors' configuration per graph"
    )
    print(
        f"{'graph':>17} {'nodes':>6} {'edges':>7} {'features':>8} {'ours s':>7} {'ours MB':>8}"
        f" {'peak RSS MB':>11} {'literal s':>10} {'literal MB':>11}"
    )
    rows = []
    for name in LARGE_GRAPHS:
        g = prepare_graph(load_graph(name)[0])
        n, e, f = g.num_nodes, g.edge_index.shape[1], g.x.shape[1]
        t, mb, peak = measure("embed", name, seed=args.seed, repeats=3)
        if literal_gb("embed", n) + n * f * 4 / 1e9 <= args.max_literal_gb:
            lt, lmb, _ = measure("embed", name, literal=True, seed=args.seed)
            lit = f"{lt:>10.2f} {lmb:>11.0f}"
        else:
            lit = f"{'(~' + format(literal_gb('embed', n), '.0f') + ' GB)':>10} {'skipped':>11}"
        rows.append((n, e, t, mb))
        print(
            f"{name:>17} {n:>6} {e:>7} {f:>8} {t:>7.2f} {mb:>8.0f} {peak:>11.0f} {lit}", flush=True
        )
    ns, es, ts, ms = zip(*rows, strict=True)
    print(
        f"exponents (ours): time ~ N^{fit_exponent(ns, ts):.2f} ~ E^{fit_exponent(es, ts):.2f}, "
        f"peak memory ~ N^{fit_exponent(ns, ms):.2f} ~ E^{fit_exponent(es, ms):.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 3000])
    parser.add_argument(
        "--scaling", action="store_true", help="cost against size on the larger graphs (issue #23)"
    )
    parser.add_argument(
        "--only-scaling", action="store_true", help="skip the Cora / CiteSeer comparison"
    )
    parser.add_argument("--scaling-sizes", type=int, nargs="+", default=[500, 3000, 10000])
    parser.add_argument(
        "--scaling-parts", nargs="+", choices=("epoch", "embed"), default=["epoch", "embed"]
    )
    parser.add_argument(
        "--max-literal-gb",
        type=float,
        default=6.0,
        help="skip the literal path where its dense n x n matrices would need more",
    )
    parser.add_argument(
        "--epochs", type=int, default=None, help="timed epochs (3 up to 1,000 nodes, else 1)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    if args.only_scaling:
        scaling(args)
        return
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
    if args.scaling:
        scaling(args)


if __name__ == "__main__":
    main()
