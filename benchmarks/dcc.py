"""DCC speed: (1) seconds per outer iteration with the one-pass contrastive real gradient vs a literal
per-class loop (augment, forward and backward class by class); (2) N evaluation ConvNets trained as
one vmapped stacked state (torch.func) vs one after another. Ratios are measured in the same run.

    OMP_NUM_THREADS=1 python benchmarks/dcc.py [--ipc 10] [--width 32] [--size 16] [--repeats 2]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

import plugins.methods.dcc as dcc
from plugins.methods.dcc import DCCConfig, EvalConfig, condense, evaluate_synthetic
from plugins.methods.dcc.dsa import apply_dsa, sample_dsa
from plugins.methods.dcc.match import gradient_match_distance, real_class_mean_gradient_loop


def literal_dcc_loss(net, real, syn, dsa=None, generator=None, params=None):
    """DCC written class by class: augment, forward and backward each class on its own."""
    k = real.shape[0]
    if dsa is not None and params is None:
        params = sample_dsa(k, real.shape[-1], dsa, generator, device=real.device)
    xr, yr, xs = [], [], []
    for c in range(k):
        r, s = real[c], syn[c]
        if dsa is not None:
            r = apply_dsa(r, params, torch.full((len(r),), c, device=r.device), dsa)
            s = apply_dsa(s, params, torch.full((len(s),), c, device=s.device), dsa)
        xr.append(r)
        yr.append(torch.full((len(r),), c, device=r.device))
        xs.append(s)
    g_real = real_class_mean_gradient_loop(net, torch.cat(xr), torch.cat(yr), k)
    ys = torch.arange(k, device=syn.device).repeat_interleave(syn.shape[1])
    ps = [p for p in net.parameters() if p.requires_grad]
    g_syn = torch.autograd.grad(F.cross_entropy(net(torch.cat(xs)), ys), ps, create_graph=True)
    return gradient_match_distance(g_syn, g_real)


def load(size: int):
    from plugins.data import shared_path
    from plugins.methods.dcc.run import _load

    name = "cifar10" if shared_path("cifar10", required=False) else None
    return _load(name, size)


def timed(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--batch-real", type=int, default=32)
    ap.add_argument("--n-models", type=int, default=4)
    ap.add_argument("--eval-epochs", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()
    train, test, name = load(a.size)
    test = test.subset(torch.arange(min(1000, len(test))))
    print(
        f"data {name} {tuple(train.images.shape)}, device {a.device}, threads {torch.get_num_threads()}"
    )

    cfg = DCCConfig(batch_real=a.batch_real, width=a.width, net_epochs=2, warmup_outer=0)

    def one_outer():
        condense(train, a.ipc, "dcc", True, 1, cfg, a.device, seed=0)

    ours = timed(one_outer, a.repeats)
    original = dcc.dcc_matching_loss
    dcc.dcc_matching_loss = literal_dcc_loss
    try:
        loop = timed(one_outer, a.repeats)
    finally:
        dcc.dcc_matching_loss = original
    print(
        f"outer iteration (ipc {a.ipc}, all-contrastive): one-pass {ours:.2f} s, "
        f"per-class loop {loop:.2f} s, speed-up x{loop / ours:.2f}"
    )

    syn = condense(train, a.ipc, "random", device=a.device)
    ecfg = EvalConfig(epochs=a.eval_epochs, width=a.width)
    vm = timed(
        lambda: evaluate_synthetic(syn, test, a.n_models, ecfg, a.device, vectorize=True), a.repeats
    )
    sq = timed(
        lambda: evaluate_synthetic(syn, test, a.n_models, ecfg, a.device, vectorize=False),
        a.repeats,
    )
    print(
        f"{a.n_models} evaluation models x {a.eval_epochs} epochs: vmapped {vm:.2f} s, "
        f"one after another {sq:.2f} s, speed-up x{sq / vm:.2f}"
    )


if __name__ == "__main__":
    main()
