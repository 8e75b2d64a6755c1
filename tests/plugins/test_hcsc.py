"""HCSC: hierarchical k-means, concentration, selection statistics, MoCo equivalence, reference loop."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from plugins.losses import info_nce
from plugins.methods.hcsc import (
    HCSC,
    ClusterResult,
    HCSCConfig,
    cluster_concentration,
    hierarchical_kmeans,
)
from plugins.methods.hcsc.kmeans import kmeans


def _planted(seed: int = 0, per: int = 15):
    """4 super-clusters x 3 sub-clusters on the sphere, well separated at both levels."""
    g = torch.Generator().manual_seed(seed)
    dim = 4 + 12
    eye = torch.eye(dim, dtype=torch.float64)
    sub_centres, sub_of = [], []
    for s in range(4):
        for j in range(3):
            sub_centres.append(F.normalize(eye[s] + 0.35 * eye[4 + 3 * s + j], dim=0))
            sub_of.append(s)
    centres = torch.stack(sub_centres)
    sub = torch.arange(12).repeat_interleave(per)
    x = centres[sub] + 0.01 * torch.randn(len(sub), dim, generator=g, dtype=torch.float64)
    perm = torch.randperm(len(sub), generator=g)
    return x[perm].float(), sub[perm], torch.tensor(sub_of)[sub[perm]]


def _same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True when a and b induce the same partition (a bijection between their ids)."""
    pairs = torch.unique(torch.stack([a, b]), dim=1)
    return pairs.shape[1] == len(torch.unique(a)) == len(torch.unique(b))


def test_hierarchical_kmeans_recovers_planted_clusters_and_parents_compose():
    x, sub, sup = _planted()
    res = hierarchical_kmeans(x, sizes=(12, 4), restarts=3, seed=0)
    assert _same_partition(res.im2cluster[0], sub)
    assert _same_partition(res.im2cluster[1], sup)
    # composed labels: a sample's level-1 id is the parent of its level-0 id
    assert torch.equal(res.im2cluster[1], res.parents[0][res.im2cluster[0]])
    # every level-0 prototype's parent contains exactly the samples it holds
    for c in range(12):
        members = res.im2cluster[0] == c
        assert torch.unique(res.im2cluster[1][members]).tolist() == [int(res.parents[0][c])]
    for cent, phi in zip(res.centroids, res.density):
        assert torch.allclose(cent.norm(dim=1), torch.ones(len(cent)), atol=1e-5)
        assert math.isclose(float(phi.mean()), 0.2, rel_tol=1e-5)


def test_kmeans_objective_no_worse_than_sklearn_on_blobs():
    from sklearn.cluster import KMeans
    from sklearn.datasets import make_blobs

    xn, _ = make_blobs(600, n_features=8, centers=6, cluster_std=0.6, random_state=1)
    x = torch.tensor(xn, dtype=torch.float32)
    labels, cent, dist, obj = kmeans(x, 6, niter=30, restarts=3, seed=0)
    ref = KMeans(6, n_init=3, random_state=0).fit(xn).inertia_
    assert obj <= ref * 1.001
    # returned distances and objective agree with the centroids
    assert torch.allclose(dist, (x - cent[labels]).norm(dim=1), atol=1e-4)
    assert math.isclose(obj, float((dist**2).sum()), rel_tol=1e-4)


def test_concentration_matches_hand_computed_example():
    assign = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3, 3, 3])
    dist = torch.tensor([1.0, 2.0, 3.0, 2.0, 4.0, 5.0, 1.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    phi = cluster_concentration(dist, assign, 5, temperature=0.2)
    raw = np.array(
        [2.0 / np.log(13), 3.0 / np.log(12), 0.0, 1.0 / np.log(14), 0.0]
    )  # cluster 2 singleton, cluster 4 empty: both get the max
    raw[[2, 4]] = raw[[0, 1, 3]].max()
    lo, hi = np.percentile(raw, 10), np.percentile(raw, 90)
    want = np.clip(raw, lo, hi)
    want = 0.2 * want / want.mean()
    np.testing.assert_allclose(phi.numpy(), want, rtol=1e-10)
    assert math.isclose(float(phi.mean()), 0.2, rel_tol=1e-12)


# -- model ----------------------------------------------------------------------------------------


class _Flat(nn.Module):
    def __init__(self, d_in: int = 12, d: int = 8):
        super().__init__()
        self.lin = nn.Linear(d_in, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x.flatten(1))


def _clusters(dim: int, n: int, sizes=(6, 3), seed: int = 0) -> ClusterResult:
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n, dim, generator=g)
    return hierarchical_kmeans(feats, sizes, restarts=1, seed=seed)


def _model(**kw) -> HCSC:
    torch.manual_seed(0)
    cfg = HCSCConfig(dim=6, queue_size=10, momentum=1.0, temperature=0.2, **kw)
    m = HCSC(_Flat(), 8, cfg)
    m.queue.enqueue(F.normalize(torch.randn(10, 6), dim=1), torch.arange(10))
    return m


def test_clustering_off_equals_moco_info_nce():
    m = _model()
    x_q, x_k, idx = torch.randn(5, 3, 2, 2), torch.randn(5, 3, 2, 2), torch.arange(5)
    with torch.no_grad():
        q, k, queue = m.query(x_q), m.key(x_k), m.queue.features.clone()
    loss, _ = m(x_q, x_k, idx, clusters=None)
    # MoCo: each query against its key and the queue only (library InfoNCE, one query at a time)
    per_query = torch.stack([info_nce(q[i : i + 1], k[i : i + 1], 0.2, queue) for i in range(5)])
    torch.testing.assert_close(loss, per_query.mean())
    qd, kd, nd = q.double(), k.double(), queue.double()
    ref = 0.0
    for i in range(5):
        logits = [float(qd[i] @ kd[i]) / 0.2] + [float(qd[i] @ nd[j]) / 0.2 for j in range(10)]
        ref += -logits[0] + math.log(sum(math.exp(v) for v in logits))
    assert math.isclose(float(loss.detach()), ref / 5, rel_tol=1e-5)
    # the batch's keys were enqueued with their indices as tags
    assert set(m.queue.tags.tolist()) >= set(range(5))


@pytest.mark.parametrize("reference", [False, True])
def test_forward_matches_literal_loop(reference: bool):
    m = _model(reference_semantics=reference)
    clusters = _clusters(6, 40, sizes=(6, 3))
    x_q, x_k = torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2)
    idx = torch.tensor([0, 7, 13, 39])
    snapshot = copy.deepcopy(m)
    m._generator = torch.Generator().manual_seed(5)
    loss, _ = m(x_q, x_k, idx, clusters)

    snapshot._generator = torch.Generator().manual_seed(5)
    inst, proto = snapshot._sample_masks(clusters, idx)
    q, k = snapshot.query(x_q).detach().double(), snapshot.key(x_k).double()
    queue, T = snapshot.queue.features.double(), 0.2
    l_ins = l_proto = 0.0
    for lvl in range(2):
        ids = clusters.im2cluster[lvl]
        cent, phi = clusters.centroids[lvl].double(), clusters.density[lvl].double()
        pos_ids = [int(ids[i]) for i in idx]
        # the code's candidates: range(im2cluster.max()) minus the batch's positives
        top = int(ids.max()) if reference else len(cent)
        negs = [c for c in range(top) if c not in set(pos_ids)]
        for b in range(4):
            logits = [float(q[b] @ k[b]) / T]
            for j in range(10):
                s = float(q[b] @ queue[j])
                if inst[lvl][b, j]:
                    logits.append(s / T)
                elif reference:
                    logits.append(0.0)  # zeroed, still in the denominator
            l_ins += (-logits[0] + math.log(sum(math.exp(v) for v in logits))) / 4
            p = pos_ids[b]
            logits = [float(q[b] @ cent[p]) / float(phi[p])]
            for c in negs:
                kept = proto[lvl] is None or bool(proto[lvl][b, c])
                if kept:
                    logits.append(float(q[b] @ cent[c]) / float(phi[c]))
                elif reference:
                    logits.append(0.0)
            l_proto += (-logits[0] + math.log(sum(math.exp(v) for v in logits))) / 4 / 2
    assert proto[0] is not None and proto[1] is None  # prototype selection below the top level only
    assert math.isclose(float(loss.detach()), l_ins + l_proto, rel_tol=1e-5)


def test_instance_selection_rate_and_positive_kept():
    m = _model()
    clusters = _clusters(6, 40, sizes=(5, 2), seed=1)
    m._generator = torch.Generator().manual_seed(0)
    reps = 4000
    idx = torch.full((reps,), 3)
    inst, _ = m._sample_masks(clusters, idx)
    keys = m.queue.features.double()
    for lvl in range(2):
        s = int(clusters.im2cluster[lvl][3])
        logits = keys @ clusters.centroids[lvl].double().T / clusters.density[lvl].double()
        p_same = torch.softmax(logits, dim=1)[:, s]  # P[j, s(i)]
        removed = (~inst[lvl]).double().mean(0)
        sigma = (p_same * (1 - p_same) / reps).sqrt().clamp_min(1e-3)
        assert ((removed - p_same).abs() <= 4 * sigma).all(), (removed, p_same)
    # prototype selection at level 0: removal rate of prototype c = softmax(C0 C1^T / phi1)[c, parent]
    parent = int(clusters.parents[0][clusters.im2cluster[0][3]])
    logits = clusters.centroids[0].double() @ clusters.centroids[1].double().T
    p_parent = torch.softmax(logits / clusters.density[1].double(), dim=1)[:, parent]
    _, proto = m._sample_masks(clusters, idx)
    removed = (~proto[0]).double().mean(0)
    sigma = (p_parent * (1 - p_parent) / reps).sqrt().clamp_min(1e-3)
    assert ((removed - p_parent).abs() <= 4 * sigma).all(), (removed, p_parent)
    # the positive is never a selection candidate: with every negative removed only it remains
    from plugins.methods.hcsc import selective_info_nce

    q = F.normalize(torch.randn(3, 6), dim=1)
    none_kept = torch.zeros(3, 10, dtype=torch.bool)
    assert float(selective_info_nce(q, q, m.queue.features, 0.2, none_kept)) == pytest.approx(0.0)


def test_queue_cache_equals_full_recompute():
    torch.manual_seed(0)
    cached, full = _model(), _model(cache_queue_probs=False)
    full.load_state_dict(cached.state_dict())
    clusters = _clusters(6, 40)
    for step in range(4):
        x_q, x_k = torch.randn(3, 3, 2, 2), torch.randn(3, 3, 2, 2)
        idx = torch.randint(0, 40, (3,))
        cached._generator = torch.Generator().manual_seed(step)
        full._generator = torch.Generator().manual_seed(step)
        a, _ = cached(x_q, x_k, idx, clusters)
        b, _ = full(x_q, x_k, idx, clusters)
        torch.testing.assert_close(a, b)
    fresh = HCSC.prototype_probs(cached.queue.features, clusters)
    for c, f in zip(cached._queue_probs, fresh):
        torch.testing.assert_close(c, f)


def test_run_demo_writes_outputs(tmp_path, monkeypatch):
    import plugins.reporting
    from plugins.methods.hcsc.run import run
    from plugins.reporting import RunContext, RunDir

    # the 2-D map's t-SNE (foundation code) takes minutes on a loaded 2-core CPU; a PCA map keeps
    # this test about HCSC's outputs
    def pca_2d(z, seed=0):
        z = torch.as_tensor(z).float()
        return torch.pca_lowrank(z - z.mean(0), q=2, center=False)[0].numpy()

    monkeypatch.setattr(plugins.reporting, "embed_2d", pca_2d)

    ctx = RunContext(
        "hcsc",
        RunDir(path=tmp_path),
        epochs=2,
        device=torch.device("cpu"),
        demo=True,
        options={"image_size": 8, "batch_size": 256, "warmup_epochs": 1},
        progress=False,
    )
    metrics = run(ctx)
    assert 0.2 < metrics["knn_acc"] <= 1.0  # 10 classes: well above chance after two epochs
    assert 0.0 <= metrics["false_negatives_removed"] <= 1.0
    for name in (
        "metrics.json",
        "config.yaml",
        "checkpoint.pt",
        "loss.png",
        "spectrum.png",
        "embedding.png",
        "concentration.png",
        "selection.png",
    ):
        assert (tmp_path / name).exists(), name


def test_multi_crop_adds_one_term_per_crop():
    m = _model()
    clusters = _clusters(6, 40)
    x_q, x_k, idx = torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2), torch.tensor([1, 5, 9, 30])
    twin = copy.deepcopy(m)
    m._generator = torch.Generator().manual_seed(2)
    twin._generator = torch.Generator().manual_seed(2)
    single, _ = m(x_q, x_k, idx, clusters)
    # a "local crop" identical to the query view: same masks, same terms, so the loss doubles
    double, _ = twin(x_q, x_k, idx, clusters, crops=[x_q])
    torch.testing.assert_close(double, 2 * single)
