"""HCSC speed: (1) the selection step with the per-slot queue cache vs recomputing the full
queue x prototype softmax every step; (2) our torch k-means vs scikit-learn KMeans (and faiss when
installed) on N x 128 features: time and objective, as ratios measured in the same run.

    python benchmarks/hcsc.py                      # paper scale: queue 16384, 3000/2000/1000, 50k x 128
    python benchmarks/hcsc.py --queue 4096 --sizes 300 200 100 --n 10000 --k 300   # quick

The features are a mixture of Gaussians on the sphere (a timing workload, not an accuracy claim).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

from plugins.methods.hcsc import HCSC, HCSCConfig, hierarchical_kmeans
from plugins.methods.hcsc.kmeans import kmeans


class _Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def _timed(fn, repeats: int) -> tuple[float, object]:
    fn()  # warm-up (allocations, caches)
    t0 = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeats, out


def bench_selection(args: argparse.Namespace, device: torch.device) -> None:
    dim = 128
    feats = torch.randn(args.n_proto_points, dim, device=device)
    clusters = hierarchical_kmeans(feats, args.sizes, restarts=1, seed=0, niter=5, init="random")
    rows = []
    for cached in (True, False):
        cfg = HCSCConfig(dim=dim, queue_size=args.queue, cache_queue_probs=cached, momentum=1.0)
        torch.manual_seed(0)
        model = HCSC(_Identity(), dim, cfg).to(device)
        # an identity "encoder" + head isolates the selection and loss cost from the backbone
        x = torch.randn(args.batch, dim, device=device)
        idx = torch.randint(0, args.n_proto_points, (args.batch,), device=device)

        def step(model=model, x=x, idx=idx):
            with torch.no_grad():
                loss, _ = model(x, x, idx, clusters)
            return loss

        sec, _ = _timed(step, args.repeats)
        rows.append((cached, sec))
    c, f = rows[0][1], rows[1][1]
    print(
        f"selection step (B={args.batch}, K={args.queue}, prototypes={args.sizes}, {device}): "
        f"cached {c * 1e3:.1f} ms, full recompute {f * 1e3:.1f} ms, speed-up x{f / c:.2f}"
    )


def bench_kmeans(args: argparse.Namespace, device: torch.device) -> None:
    g = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(args.k, 128, generator=g), dim=1)
    lab = torch.randint(0, args.k, (args.n,), generator=g)
    x = F.normalize(centres[lab] + 0.08 * torch.randn(args.n, 128, generator=g), dim=1)
    results = {}
    t0 = time.perf_counter()
    _, _, _, obj = kmeans(x.to(device), args.k, niter=args.iters, restarts=1, seed=0)
    results["ours (torch, k-means++)"] = (time.perf_counter() - t0, obj)
    t0 = time.perf_counter()
    _, _, _, obj = kmeans(x.to(device), args.k, niter=args.iters, restarts=1, seed=0, init="random")
    results["ours (torch, random init)"] = (time.perf_counter() - t0, obj)
    from sklearn.cluster import KMeans

    t0 = time.perf_counter()
    km = KMeans(args.k, n_init=1, max_iter=args.iters, random_state=0, tol=0).fit(x.numpy())
    results["scikit-learn KMeans"] = (time.perf_counter() - t0, float(km.inertia_))
    try:
        import faiss  # noqa: F401

        t0 = time.perf_counter()
        _, _, _, obj = kmeans(x, args.k, niter=args.iters, restarts=1, seed=0, backend="faiss")
        results["faiss"] = (time.perf_counter() - t0, obj)
    except ImportError:
        print("faiss not installed: skipped")
    ref_t, ref_o = results["scikit-learn KMeans"]
    print(f"k-means on {args.n} x 128, k={args.k}, {args.iters} iterations, 1 restart ({device}):")
    print("| implementation | seconds | objective | time / sklearn | objective / sklearn |")
    print("|---|---|---|---|---|")
    for name, (t, o) in results.items():
        print(f"| {name} | {t:.2f} | {o:.1f} | {t / ref_t:.2f} | {o / ref_o:.4f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--queue", type=int, default=16384)
    p.add_argument("--sizes", type=int, nargs="+", default=[3000, 2000, 1000])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--n-proto-points", type=int, default=20000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--n", type=int, default=50000)
    p.add_argument("--k", type=int, default=1000)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--skip-kmeans", action="store_true")
    p.add_argument("--skip-selection", action="store_true")
    args = p.parse_args()
    device = torch.device(args.device)
    if not args.skip_selection:
        bench_selection(args, device)
    if not args.skip_kmeans:
        bench_kmeans(args, device)


if __name__ == "__main__":
    main()
