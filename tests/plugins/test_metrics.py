"""Metrics against hand-computed values, explicit loops and scikit-learn."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from sklearn import metrics as skm
from sklearn.cluster import KMeans

from plugins.metrics import (
    binary_scores,
    cluster_scores,
    confusion_matrix,
    dice_per_class,
    effective_rank,
    f1_optimal_threshold,
    hungarian_accuracy,
    knn_accuracy,
    linear_probe,
    segmentation_scores,
    spectrum,
)

# rows = truth, columns = prediction
CM = np.array([[5, 1, 0], [2, 3, 1], [0, 0, 4]])


def _labels_from_confusion(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t, p = [], []
    for i, j in itertools.product(range(len(cm)), repeat=2):
        t += [i] * int(cm[i, j])
        p += [j] * int(cm[i, j])
    return np.array(t), np.array(p)


# ----------------------------------------------------------------------------- segmentation
def test_segmentation_scores_hand_computed():
    s = segmentation_scores(torch.tensor(CM))
    assert s["oa"] == pytest.approx(12 / 16)
    pe = (6 * 7 + 6 * 4 + 4 * 5) / 16**2  # row sums (6, 6, 4), column sums (7, 4, 5)
    assert s["kappa"] == pytest.approx((12 / 16 - pe) / (1 - pe))
    assert s["iou"] == pytest.approx([5 / 8, 3 / 7, 4 / 5])
    assert s["f1"] == pytest.approx([10 / 13, 6 / 10, 8 / 9])
    assert s["miou"] == pytest.approx((5 / 8 + 3 / 7 + 4 / 5) / 3)
    assert s["mf1"] == pytest.approx((10 / 13 + 6 / 10 + 8 / 9) / 3)


def test_segmentation_scores_match_sklearn():
    t, p = _labels_from_confusion(CM)
    s = segmentation_scores(CM)
    assert s["kappa"] == pytest.approx(skm.cohen_kappa_score(t, p))
    assert s["oa"] == pytest.approx(skm.accuracy_score(t, p))
    assert s["iou"] == pytest.approx(list(skm.jaccard_score(t, p, average=None)))
    assert s["f1"] == pytest.approx(list(skm.f1_score(t, p, average=None)))


def test_segmentation_scores_leave_absent_classes_out_of_means():
    cm = np.zeros((4, 4), dtype=int)
    cm[:3, :3] = CM  # class 3 is in neither truth nor prediction
    s = segmentation_scores(cm)
    assert math.isnan(s["iou"][3]) and math.isnan(s["f1"][3])
    assert s["miou"] == pytest.approx(segmentation_scores(CM)["miou"])
    assert s["mf1"] == pytest.approx(segmentation_scores(CM)["mf1"])


def test_confusion_matrix_counts_and_ignore_index():
    t, p = _labels_from_confusion(CM)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(t))
    t, p = torch.tensor(t[order]), torch.tensor(p[order])
    assert torch.equal(confusion_matrix(t, p, 3), torch.tensor(CM))
    t_ign = torch.cat([t, torch.full((5,), 255)])
    p_ign = torch.cat([p, torch.zeros(5, dtype=torch.long)])
    assert torch.equal(confusion_matrix(t_ign, p_ign, 3, ignore_index=255), torch.tensor(CM))
    # a 2-D label map gives the same counts as its flattening
    assert torch.equal(confusion_matrix(t.reshape(2, 8), p.reshape(2, 8), 3), torch.tensor(CM))


def test_dice_per_class_matches_loop():
    g = torch.Generator().manual_seed(0)
    pred = torch.randint(0, 4, (2, 6, 7), generator=g)
    target = torch.randint(0, 3, (2, 6, 7), generator=g)  # class 3 never in the truth
    expected = []
    for c in range(4):
        inter = ((pred == c) & (target == c)).sum().item()
        denom = (pred == c).sum().item() + (target == c).sum().item()
        expected.append(2 * inter / denom if denom else float("nan"))
    torch.testing.assert_close(
        dice_per_class(pred, target, 4, include_background=True),
        torch.tensor(expected, dtype=torch.float64),
    )
    torch.testing.assert_close(
        dice_per_class(pred, target, 4), torch.tensor(expected[1:], dtype=torch.float64)
    )
    empty = dice_per_class(torch.zeros(3, 3), torch.zeros(3, 3), 3)
    assert torch.isnan(empty).all()  # classes 1, 2 in neither map
    with pytest.raises(ValueError, match="same shape"):
        dice_per_class(pred, target[0], 4)


# ----------------------------------------------------------------------------- clustering
def _blobs(n_per=30, k=4, dim=5, spread=0.05, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim)) * 5
    x = np.concatenate([c + spread * rng.normal(size=(n_per, dim)) for c in centres])
    y = np.repeat(np.arange(k), n_per)
    perm = rng.permutation(len(y))
    return x[perm], y[perm]


@pytest.mark.parametrize("method", ["kmeans", "gmm"])
def test_cluster_scores_recover_a_known_partition(method):
    x, y = _blobs()
    s = cluster_scores(torch.tensor(x), torch.tensor(y), 4, method=method)
    assert s == pytest.approx({"nmi": 1.0, "ari": 1.0, "ami": 1.0, "acc": 1.0})


def test_cluster_scores_match_sklearn_on_overlapping_clusters():
    x, y = _blobs(spread=4.0, seed=1)
    pred = KMeans(n_clusters=4, n_init=10, random_state=3).fit_predict(x)
    s = cluster_scores(x, y, 4, method="kmeans", seed=3)
    assert s["nmi"] == pytest.approx(skm.normalized_mutual_info_score(y, pred))
    assert s["ari"] == pytest.approx(skm.adjusted_rand_score(y, pred))
    assert s["ami"] == pytest.approx(skm.adjusted_mutual_info_score(y, pred))
    assert s["acc"] == pytest.approx(_brute_force_accuracy(y, pred))
    assert s["acc"] < 1.0  # the clusters really overlap
    with pytest.raises(ValueError, match="gmm"):
        cluster_scores(x, y, 4, method="spectral")


def _brute_force_accuracy(labels, clusters) -> float:
    ks = sorted(set(clusters))
    ls = sorted(set(labels))
    best = 0
    for perm in itertools.permutations(ls, len(ks)):
        mapping = dict(zip(ks, perm))
        best = max(best, sum(mapping[c] == t for c, t in zip(clusters, labels)))
    return best / len(labels)


def test_hungarian_accuracy_on_permuted_labelling():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 200)
    relabel = np.array([3, 0, 4, 1, 2])
    assert hungarian_accuracy(y, relabel[y]) == 1.0
    noisy = relabel[y].copy()
    noisy[:20] = (noisy[:20] + 1) % 5
    assert hungarian_accuracy(y, noisy) == pytest.approx(_brute_force_accuracy(y, noisy))
    assert hungarian_accuracy(y, noisy) == pytest.approx(
        1 - np.mean(noisy[:20] != relabel[y][:20]) / 10
    )


# ----------------------------------------------------------------------------- kNN, probe
def _knn_loop(train_z, train_y, test_z, test_y, k, t) -> float:
    tr = train_z / np.linalg.norm(train_z, axis=1, keepdims=True)
    te = test_z / np.linalg.norm(test_z, axis=1, keepdims=True)
    correct = 0
    for q, y in zip(te, test_y):
        sims = [(float(q @ x), int(c)) for x, c in zip(tr, train_y)]
        sims.sort(key=lambda s: -s[0])
        votes: dict[int, float] = {}
        for s, c in sims[:k]:
            votes[c] = votes.get(c, 0.0) + math.exp(s / t)
        correct += max(votes, key=votes.get) == int(y)
    return correct / len(test_y)


@pytest.mark.parametrize("k, t", [(1, 0.1), (5, 0.1), (15, 0.5), (200, 0.1)])
def test_knn_accuracy_matches_loop(k, t):
    rng = np.random.default_rng(k)
    centres = rng.normal(size=(3, 8))
    train_y, test_y = rng.integers(0, 3, 60), rng.integers(0, 3, 25)
    train_z = centres[train_y] + 0.9 * rng.normal(size=(60, 8))
    test_z = centres[test_y] + 0.9 * rng.normal(size=(25, 8))
    ours = knn_accuracy(
        torch.tensor(train_z),
        torch.tensor(train_y),
        torch.tensor(test_z),
        torch.tensor(test_y),
        k,
        t,
        chunk=7,
    )
    assert ours == pytest.approx(_knn_loop(train_z, train_y, test_z, test_y, min(k, 60), t))
    assert 0.0 < ours < 1.0  # a case where the weighting matters, not a trivially perfect one


def test_linear_probe_above_chance_on_separable_data():
    x, y = _blobs(n_per=40, k=4, spread=1.0, seed=2)
    acc = linear_probe(
        torch.tensor(x[:100]), torch.tensor(y[:100]), torch.tensor(x[100:]), torch.tensor(y[100:])
    )
    assert acc >= 0.95
    rng = np.random.default_rng(0)
    chance = linear_probe(x[:100], rng.permutation(y[:100]), x[100:], y[100:])
    assert chance < acc


# ----------------------------------------------------------------------------- collapse
def test_spectrum_matches_numpy_covariance_eigenvalues():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(50, 6)) @ rng.normal(size=(6, 6))
    zn = z / np.linalg.norm(z, axis=1, keepdims=True)
    expected = np.sort(np.linalg.eigvalsh(np.cov(zn, rowvar=False, bias=True)))[::-1]
    ev = spectrum(torch.tensor(z, dtype=torch.float32))
    assert ev.dtype == torch.float64 and ev.shape == (6,)
    np.testing.assert_allclose(ev.numpy(), expected, rtol=1e-5, atol=1e-7)
    assert (ev[:-1] >= ev[1:]).all()


def test_spectrum_of_collapsed_embedding_has_one_direction():
    rng = np.random.default_rng(1)
    z = np.outer(rng.choice([-1.0, 1.0], 40), rng.normal(size=5))  # points on one line
    ev = spectrum(z)
    assert ev[0] > 0.5 and float(ev[1:].abs().max()) < 1e-10


@pytest.mark.parametrize("r", [1, 3, 7])
def test_effective_rank_of_equal_singular_values_is_r(r):
    rng = np.random.default_rng(r)
    q, _ = np.linalg.qr(rng.normal(size=(40, r)))  # r orthonormal columns
    w, _ = np.linalg.qr(rng.normal(size=(10, 10)))
    z = 3.0 * q @ w[:r]  # (40, 10), rank r, all r singular values 3
    assert effective_rank(torch.tensor(z)) == pytest.approx(r, rel=1e-6)


def test_effective_rank_between_one_and_full_for_unequal_spectrum():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(30, 4)))
    s = np.array([4.0, 2.0, 1.0, 1.0])
    p = s / s.sum()
    assert effective_rank(q * s) == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-6)


# ----------------------------------------------------------------------------- binary
def test_binary_scores_auc_from_scores_differs_from_hard_label_figure():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    # perfectly ranked but badly calibrated: every positive scores above every negative,
    # yet two positives fall below the 0.5 threshold
    scores = np.array([0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.6, 0.9])
    s = binary_scores(torch.tensor(scores), torch.tensor(y))
    assert s["roc_auc"] == 1.0
    assert s["recall"] == pytest.approx(0.5) and s["precision"] == pytest.approx(1.0)
    assert s["f1"] == pytest.approx(2 / 3)
    assert s["balanced_accuracy"] == pytest.approx((1.0 + 0.5) / 2)
    # the hard-label "AUC" some papers report is exactly balanced accuracy
    assert skm.roc_auc_score(y, scores >= 0.5) == pytest.approx(s["balanced_accuracy"])
    assert s["roc_auc"] != s["balanced_accuracy"]


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_binary_scores_single_class_auc_is_nan():
    s = binary_scores(np.array([0.2, 0.7]), np.array([1, 1]))
    assert math.isnan(s["roc_auc"]) and s["recall"] == pytest.approx(0.5)


@pytest.mark.parametrize("seed", range(6))
def test_f1_optimal_threshold_matches_a_loop_over_candidates(seed):
    rng = np.random.default_rng(seed)
    n = 60
    y = (rng.random(n) < 0.2).astype(int)
    y[0] = 1
    # rounded scores create ties, which must be called positive together
    s = np.round(rng.random(n) * 0.6 + 0.3 * y, 1)
    t = f1_optimal_threshold(torch.tensor(s), torch.tensor(y))
    best_f1, best_t = -1.0, None
    for cand in sorted(set(s.tolist()), reverse=True):
        f1 = skm.f1_score(y, (s >= cand).astype(int), zero_division=0)
        if f1 > best_f1 + 1e-12:  # strictly better: ties keep the higher threshold
            best_f1, best_t = f1, cand
    assert t == best_t
    assert binary_scores(s, y, threshold=t)["f1"] == pytest.approx(best_f1)


def test_f1_optimal_threshold_edge_cases():
    # perfectly separated: the lowest positive score, calling exactly the positives
    assert f1_optimal_threshold(np.array([0.1, 0.3, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.35
    # no positive in the validation data: nothing is called positive
    assert f1_optimal_threshold(np.array([0.1, 0.9]), np.array([0, 0])) == math.inf
    with pytest.raises(ValueError, match="differ in length"):
        f1_optimal_threshold(np.array([0.1, 0.9]), np.array([0]))


def test_confusion_matrix_rejects_predictions_outside_the_classes():
    t = torch.tensor([0, 1, 2, 255])
    with pytest.raises(ValueError, match=r"outside \[0, 3\) \(e.g. 3\) at 1 counted"):
        confusion_matrix(t, torch.tensor([0, 3, 2, 9]), 3, ignore_index=255)  # 9 is ignored
    with pytest.raises(ValueError, match="same number"):
        confusion_matrix(t, torch.tensor([0, 1]), 3)
