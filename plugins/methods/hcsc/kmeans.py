"""Hierarchical k-means and prototype concentration for HCSC, in plain torch (CPU or GPU).

Guo et al., "HCSC: Hierarchical Contrastive Selective Coding", CVPR 2022, Sec. 3.2: level 0 clusters
the samples, level ``l > 0`` clusters the L2-normalised prototypes of level ``l - 1``; a sample's
prototype at every level follows by composing the parent maps. The concentration estimate is PCL's
(Li et al., "Prototypical Contrastive Learning of Unsupervised Representations", ICLR 2021, eq. 12).

faiss is never required: :func:`kmeans` is Lloyd's algorithm with random restarts written with
matrix products, ``index_add_`` and ``bincount``; ``backend="faiss"`` uses faiss when it is installed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from plugins.errors import UserInputError

__all__ = ["ClusterResult", "kmeans", "hierarchical_kmeans", "cluster_concentration"]


@dataclass
class ClusterResult:
    """Prototypes of every level.

    Attributes:
        im2cluster: per level, (N,) int64 prototype id of each sample.
        centroids: per level, (C_l, D) L2-normalised prototypes.
        density: per level, (C_l,) concentration phi (mean = the temperature).
        parents: per level l < L-1, (C_l,) id of the level-(l+1) prototype of each level-l prototype.
        objective: per level, the k-means objective (sum of squared distances) of the kept restart.
    """

    im2cluster: list[torch.Tensor]
    centroids: list[torch.Tensor]
    density: list[torch.Tensor]
    parents: list[torch.Tensor]
    objective: list[float]

    @property
    def num_levels(self) -> int:
        return len(self.centroids)


def _assign(
    x: torch.Tensor, c: torch.Tensor, chunk: int = 65536
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid (N,) and squared distance (N,) for points (N, D) and centroids (C, D)."""
    c2 = (c * c).sum(1)
    labels, d2 = [], []
    for s in range(0, x.shape[0], chunk):
        xs = x[s : s + chunk]
        # ||x||^2 is constant per row, so the argmin needs only ||c||^2 - 2 x.c
        part = c2[None, :] - 2.0 * (xs @ c.T)
        best, idx = part.min(1)
        labels.append(idx)
        d2.append((best + (xs * xs).sum(1)).clamp_min(0))
    return torch.cat(labels), torch.cat(d2)


@torch.no_grad()
def kmeans(
    x: torch.Tensor,
    k: int,
    niter: int = 20,
    restarts: int = 1,
    seed: int = 0,
    backend: str = "torch",
    init: str = "k-means++",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Euclidean k-means (Lloyd), best of ``restarts`` initialisations.

    Empty clusters are re-seeded with the points farthest from their centroids (faiss re-splits
    large clusters instead; both keep all ``k`` prototypes alive).

    Args:
        x: (N, D) points.
        k: number of clusters (<= N).
        niter: Lloyd iterations per restart (PCL/HCSC's faiss setting: 20).
        restarts: random initialisations; the lowest objective is kept.
        seed: seed of the initialisations.
        backend: ``"torch"`` or ``"faiss"`` (needs faiss installed).
        init: ``"k-means++"`` (D^2 seeding, Arthur & Vassilvitskii 2007; k sequential passes over
            the data) or ``"random"`` (random points, as faiss).

    Returns:
        assignment (N,), centroids (k, D) (cluster means, not normalised), distances (N,) Euclidean
        distance of each point to its centroid, objective (sum of squared distances).
    """
    n = x.shape[0]
    if not 1 <= k <= n:
        raise UserInputError(
            f"k-means needs 1 <= clusters <= points, got {k} clusters for {n} points."
        )
    if backend == "faiss":
        return _faiss_kmeans(x, k, niter, restarts, seed)
    if backend != "torch":
        raise UserInputError(f"k-means backend must be 'torch' or 'faiss', got '{backend}'.")
    x = x.float()
    g = torch.Generator(device="cpu").manual_seed(seed)
    best = None
    for _ in range(max(1, restarts)):
        c = _init(x, k, init, g)
        for _ in range(niter):
            labels, d2 = _assign(x, c)
            counts = torch.bincount(labels, minlength=k)
            sums = torch.zeros_like(c).index_add_(0, labels, x)
            c = sums / counts.clamp_min(1)[:, None].to(x.dtype)
            empty = (counts == 0).nonzero().flatten()
            if empty.numel():
                c[empty] = x[d2.topk(empty.numel()).indices]
        labels, d2 = _assign(x, c)
        obj = float(d2.sum())
        if best is None or obj < best[3]:
            best = (labels, c, d2.sqrt(), obj)
    return best


def _init(x: torch.Tensor, k: int, init: str, g: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    if init == "random":
        return x[torch.randperm(n, generator=g)[:k].to(x.device)].clone()
    if init != "k-means++":
        raise UserInputError(f"k-means init must be 'k-means++' or 'random', got '{init}'.")
    c = torch.empty(k, x.shape[1], dtype=x.dtype, device=x.device)
    x2 = (x * x).sum(1)
    c[0] = x[int(torch.randint(n, (1,), generator=g))]
    d2 = (x2 - 2 * (x @ c[0]) + c[0] @ c[0]).clamp_min(0)
    u = torch.rand(k, generator=g, dtype=torch.float64).to(x.device)
    for j in range(1, k):
        # inverse-CDF draw proportional to D^2; one uniform per centre keeps it seed-deterministic
        cdf = torch.cumsum(d2, 0, dtype=torch.float64)
        i = torch.searchsorted(cdf, (u[j] * cdf[-1]).reshape(1)).clamp_max(n - 1)
        c[j] = x[i[0]]
        d2 = torch.minimum(d2, (x2 - 2 * (x @ c[j]) + c[j] @ c[j]).clamp_min(0))
    return c


def _faiss_kmeans(
    x: torch.Tensor, k: int, niter: int, restarts: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    try:
        import faiss
    except ImportError as err:
        raise UserInputError(
            "k-means backend 'faiss' needs faiss (pip install faiss-cpu); use backend='torch'."
        ) from err
    xn = x.detach().float().cpu().numpy()
    km = faiss.Kmeans(xn.shape[1], k, niter=niter, nredo=max(1, restarts), seed=seed)
    km.train(xn)
    d2, idx = km.index.search(xn, 1)
    labels = torch.from_numpy(idx[:, 0]).long().to(x.device)
    d2t = torch.from_numpy(d2[:, 0]).float().to(x.device).clamp_min(0)
    return labels, torch.from_numpy(km.centroids).to(x.device), d2t.sqrt(), float(d2t.sum())


def cluster_concentration(
    distances: torch.Tensor,
    assignment: torch.Tensor,
    num_clusters: int,
    temperature: float = 0.2,
    clip_percentiles: tuple[float, float] = (10.0, 90.0),
) -> torch.Tensor:
    """Per-prototype concentration ``phi_k = mean_{z in k} ||z - c_k|| / log(n_k + 10)`` (PCL eq. 12).

    Prototypes with at most one member get the largest phi of the others; phi is then clipped to its
    10th-90th percentiles (linear interpolation, as ``numpy.percentile``) and rescaled to mean
    ``temperature``, as in the PCL/HCSC reference code.

    Args:
        distances: (M,) distance of each point to its prototype.
        assignment: (M,) prototype id of each point.
        num_clusters: C.
        temperature: the mean of the returned phi (MoCo's T).
        clip_percentiles: lower and upper percentile.

    Returns:
        (C,) phi, float of ``distances``' dtype.
    """
    dt = distances.dtype if distances.is_floating_point() else torch.float32
    counts = torch.bincount(assignment, minlength=num_clusters).to(dt)
    sums = torch.zeros(num_clusters, dtype=dt, device=distances.device)
    sums.index_add_(0, assignment, distances.to(dt))
    phi = sums / counts.clamp_min(1) / torch.log(counts + 10)
    single = counts <= 1
    if bool(single.all()):
        phi = torch.ones_like(phi)
    elif bool(single.any()):
        phi = torch.where(single, phi[~single].max(), phi)
    lo, hi = torch.quantile(phi, torch.tensor(clip_percentiles, dtype=dt, device=phi.device) / 100)
    phi = phi.clamp(lo, hi)
    return temperature * phi / phi.mean()


@torch.no_grad()
def hierarchical_kmeans(
    features: torch.Tensor,
    sizes: tuple[int, ...] | list[int] = (3000, 2000, 1000),
    restarts: int = 1,
    seed: int = 0,
    niter: int = 20,
    temperature: float = 0.2,
    backend: str = "torch",
    init: str = "k-means++",
) -> ClusterResult:
    """HCSC's hierarchical prototypes (Sec. 3.2) from features (N, D), L2-normalised inside.

    Level 0 runs k-means with ``sizes[0]`` clusters on the samples; level ``l`` runs it with
    ``sizes[l]`` clusters on the normalised prototypes of level ``l - 1``. Concentration at level
    ``l`` uses the distances of that level's points (samples at level 0, child prototypes above).

    Args:
        features: (N, D) key-encoder features of the whole training set.
        sizes: clusters per level, decreasing (the paper's 3000/2000/1000 are for ImageNet).
        restarts: k-means restarts per level (best objective kept).
        seed: seed; level ``l`` uses ``seed + l``.
        niter: Lloyd iterations.
        temperature: mean concentration (MoCo's T).
        backend: ``"torch"`` or ``"faiss"``.
        init: k-means seeding, ``"k-means++"`` or ``"random"``.
    """
    sizes = [int(s) for s in sizes]
    if not sizes or any(s < 1 for s in sizes):
        raise UserInputError(f"cluster sizes must be positive integers, got {sizes}.")
    points = F.normalize(features.float(), dim=1)
    im2cluster, centroids, density, parents, objective = [], [], [], [], []
    for level, k in enumerate(sizes):
        if k > points.shape[0]:
            raise UserInputError(
                f"cluster size {k} at level {level} exceeds the {points.shape[0]} points it clusters; "
                "use decreasing sizes smaller than the data set."
            )
        labels, cent, dist, obj = kmeans(points, k, niter, restarts, seed + level, backend, init)
        if level == 0:
            im2cluster.append(labels)
        else:
            parents.append(labels)
            im2cluster.append(labels[im2cluster[-1]])
        density.append(cluster_concentration(dist, labels, k, temperature))
        cent = F.normalize(cent, dim=1)
        centroids.append(cent)
        objective.append(obj)
        points = cent
    return ClusterResult(im2cluster, centroids, density, parents, objective)


def scaled_cluster_sizes(
    num_samples: int, per_prototype: int = 40, ratios: tuple[float, ...] = (3, 2, 1)
) -> tuple[int, ...]:
    """Cluster sizes for a smaller data set: level 0 gets ``num_samples / per_prototype`` prototypes and
    the levels keep the paper's 3000:2000:1000 ratio (at least 2 prototypes per level)."""
    top = max(2, num_samples // per_prototype)
    return tuple(max(2, int(math.floor(top * r / ratios[0]))) for r in ratios)
