"""Evaluation metrics shared by every method.

Representation quality: :func:`knn_accuracy`, :func:`linear_probe`, :func:`cluster_scores`.
Collapse: :func:`spectrum`, :func:`effective_rank` (Jing et al., ICLR 2022; Garrido et al., RankMe, ICML 2023).
Segmentation: :func:`segmentation_scores` from a confusion matrix, :func:`dice_per_class`.
Binary classification: :func:`binary_scores` from scores (ROC-AUC is computed from scores, never hard labels),
:func:`f1_optimal_threshold` to choose an operating point on validation data.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "spectrum",
    "effective_rank",
    "knn_accuracy",
    "linear_probe",
    "cluster_scores",
    "hungarian_accuracy",
    "confusion_matrix",
    "segmentation_scores",
    "dice_per_class",
    "binary_scores",
    "f1_optimal_threshold",
]


def _to_tensor(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def _to_numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


@torch.no_grad()
def spectrum(z: torch.Tensor) -> torch.Tensor:
    """Eigenvalues, descending, float64, of the covariance of L2-normalised ``z`` (N, D).

    DirectCLR (Jing et al., ICLR 2022, Sec. 3): ``C = 1/N sum (z_i - zbar)(z_i - zbar)^T``.
    """
    z = F.normalize(_to_tensor(z).detach().double(), dim=1)
    zc = z - z.mean(0, keepdim=True)
    cov = zc.T @ zc / z.shape[0]
    ev = torch.linalg.eigvalsh(cov).clamp_min(0)
    return ev.flip(0)


@torch.no_grad()
def effective_rank(z: torch.Tensor, eps: float = 1e-12) -> float:
    """RankMe (Garrido et al., ICML 2023, eq. 1): ``exp(H(p))``, ``p_k = s_k / sum s + eps`` with
    ``s`` the singular values of ``z`` (N, D). Equals r for a matrix with r equal singular values."""
    s = torch.linalg.svdvals(_to_tensor(z).detach().double())
    p = s / s.sum() + eps
    return float(torch.exp(-(p * p.log()).sum()))


@torch.no_grad()
def knn_accuracy(
    train_z: torch.Tensor,
    train_y: torch.Tensor,
    test_z: torch.Tensor,
    test_y: torch.Tensor,
    k: int = 200,
    temperature: float = 0.1,
    num_classes: int | None = None,
    chunk: int = 1024,
) -> float:
    """Weighted kNN accuracy (Wu et al., CVPR 2018, instance discrimination, eq. 7).

    Cosine similarity to the k nearest training features; class votes weighted by ``exp(s/t)``.
    """
    train_z = F.normalize(_to_tensor(train_z).float(), dim=1)
    test_z = F.normalize(_to_tensor(test_z).float().to(train_z.device), dim=1)
    train_y = _to_tensor(train_y).long().to(train_z.device)
    test_y = _to_tensor(test_y).long().to(train_z.device)
    c = int(num_classes or int(max(train_y.max(), test_y.max())) + 1)
    k = min(k, train_z.shape[0])
    correct = 0
    for start in range(0, test_z.shape[0], chunk):
        sim = test_z[start : start + chunk] @ train_z.T
        w, idx = sim.topk(k, dim=1)
        votes = torch.zeros(sim.shape[0], c, device=sim.device)
        votes.scatter_add_(1, train_y[idx], (w / temperature).exp())
        correct += int((votes.argmax(1) == test_y[start : start + chunk]).sum())
    return correct / test_z.shape[0]


def linear_probe(
    train_z: torch.Tensor,
    train_y: torch.Tensor,
    test_z: torch.Tensor,
    test_y: torch.Tensor,
    C: float = 1.0,
    max_iter: int = 1000,
    normalize: bool = True,
) -> float:
    """Accuracy of a logistic regression (scikit-learn, L-BFGS) on frozen, standardised features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    xtr, xte = _to_numpy(train_z).astype(np.float64), _to_numpy(test_z).astype(np.float64)
    if normalize:
        scaler = StandardScaler().fit(xtr)
        xtr, xte = scaler.transform(xtr), scaler.transform(xte)
    clf = LogisticRegression(C=C, max_iter=max_iter)
    clf.fit(xtr, _to_numpy(train_y))
    return float((clf.predict(xte) == _to_numpy(test_y)).mean())


def hungarian_accuracy(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Best one-to-one mapping of clusters to labels (Kuhn-Munkres), as accuracy."""
    from scipy.optimize import linear_sum_assignment

    labels, clusters = np.asarray(labels), np.asarray(clusters)
    _, li = np.unique(labels, return_inverse=True)
    _, ci = np.unique(clusters, return_inverse=True)
    table = np.zeros((ci.max() + 1, li.max() + 1), dtype=np.int64)
    np.add.at(table, (ci, li), 1)
    rows, cols = linear_sum_assignment(-table)
    return float(table[rows, cols].sum() / len(labels))


def cluster_scores(
    z: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    n_clusters: int,
    method: str = "gmm",
    seed: int = 0,
) -> dict[str, float]:
    """Cluster ``z`` (N, D) with a Gaussian mixture (``"gmm"``) or k-means (``"kmeans"``) and score the
    partition against ``labels``: NMI, ARI, AMI and Hungarian accuracy (CLAWS's evaluation)."""
    from sklearn import metrics
    from sklearn.cluster import KMeans
    from sklearn.mixture import GaussianMixture

    x = _to_numpy(z).astype(np.float64)
    y = _to_numpy(labels)
    if method == "gmm":
        pred = GaussianMixture(
            n_components=n_clusters, covariance_type="full", reg_covar=1e-4, random_state=seed
        ).fit_predict(x)
    elif method == "kmeans":
        pred = KMeans(n_clusters=n_clusters, n_init=10, random_state=seed).fit_predict(x)
    else:
        raise ValueError(f"method must be 'gmm' or 'kmeans', got {method!r}")
    return {
        "nmi": float(metrics.normalized_mutual_info_score(y, pred)),
        "ari": float(metrics.adjusted_rand_score(y, pred)),
        "ami": float(metrics.adjusted_mutual_info_score(y, pred)),
        "acc": hungarian_accuracy(y, pred),
    }


def confusion_matrix(
    target: torch.Tensor, pred: torch.Tensor, num_classes: int, ignore_index: int | None = None
) -> torch.Tensor:
    """Confusion matrix ``[true, pred]`` (int64) by one ``bincount``; ``ignore_index`` pixels dropped."""
    target, pred = (
        _to_tensor(target).reshape(-1).long(),
        _to_tensor(pred).reshape(-1).long().to(_to_tensor(target).device),
    )
    keep = (target >= 0) & (target < num_classes)
    if ignore_index is not None:
        keep &= target != ignore_index
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must hold the same number of values, got {pred.numel()} and {target.numel()}"
        )
    bad = keep & ((pred < 0) | (pred >= num_classes))
    if bool(bad.any()):
        raise ValueError(
            f"pred holds class ids outside [0, {num_classes}) (e.g. {int(pred[bad][0])}) at "
            f"{int(bad.sum())} counted positions"
        )
    idx = target[keep] * num_classes + pred[keep]
    return torch.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes)


def segmentation_scores(confusion: torch.Tensor | np.ndarray) -> dict[str, float | list[float]]:
    """Dataset-level scores from one confusion matrix ``confusion[true, pred]``.

    OA, Cohen's Kappa, per-class IoU and F1, mIoU and mean F1 (classes absent from both truth and
    prediction are left out of the means, as NaN in the per-class lists).
    """
    cm = _to_numpy(confusion).astype(np.float64)
    total = cm.sum()
    tp = np.diag(cm)
    support, predicted = cm.sum(1), cm.sum(0)
    oa = tp.sum() / total if total else float("nan")
    pe = (support * predicted).sum() / total**2 if total else float("nan")
    kappa = (oa - pe) / (1 - pe) if pe != 1 else 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        union = support + predicted - tp
        iou = np.where(union > 0, tp / union, np.nan)
        f1 = np.where(support + predicted > 0, 2 * tp / (support + predicted), np.nan)
    return {
        "oa": float(oa),
        "kappa": float(kappa),
        "miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "mf1": float(np.nanmean(f1)) if np.isfinite(f1).any() else float("nan"),
        "iou": [float(v) for v in iou],
        "f1": [float(v) for v in f1],
    }


def dice_per_class(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, include_background: bool = False
) -> torch.Tensor:
    """Dice per class (C,) from integer label maps of equal shape; NaN where a class is in neither."""
    pred, target = _to_tensor(pred).long(), _to_tensor(target).long()
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    cm = confusion_matrix(target, pred, num_classes).double()
    tp = cm.diag()
    denom = cm.sum(0) + cm.sum(1)
    dice = torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.full_like(tp, float("nan")))
    return dice if include_background else dice[1:]


def binary_scores(
    scores: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray, threshold: float = 0.5
) -> dict[str, float]:
    """Binary metrics: ROC-AUC from continuous ``scores``; F1, precision, recall and balanced accuracy
    from ``scores >= threshold``.

    Note: ``roc_auc_score`` on hard 0/1 predictions equals balanced accuracy; it is reported here
    under that name, never as AUC.
    """
    from sklearn import metrics

    s, y = (
        _to_numpy(scores).astype(np.float64).reshape(-1),
        _to_numpy(target).astype(np.int64).reshape(-1),
    )
    pred = (s >= threshold).astype(np.int64)
    auc = float(metrics.roc_auc_score(y, s)) if len(np.unique(y)) == 2 else float("nan")
    return {
        "roc_auc": auc,
        "f1": float(metrics.f1_score(y, pred, zero_division=0)),
        "precision": float(metrics.precision_score(y, pred, zero_division=0)),
        "recall": float(metrics.recall_score(y, pred, zero_division=0)),
        "balanced_accuracy": float(metrics.balanced_accuracy_score(y, pred)),
    }


def f1_optimal_threshold(
    scores: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray
) -> float:
    """The threshold ``t`` that maximises the F1 of ``scores >= t`` against binary ``target``.

    Candidates are the distinct scores; ties in F1 go to the highest threshold (the fewest
    positive calls). Meant for validation data: the chosen ``t`` is then applied, unchanged, to the
    test scores (e.g. with :func:`binary_scores`). Returns ``inf`` when ``target`` has no positive,
    so that nothing is called positive.
    """
    s = _to_numpy(scores).astype(np.float64).reshape(-1)
    y = _to_numpy(target).astype(np.int64).reshape(-1)
    if len(s) != len(y):
        raise ValueError(f"scores ({len(s)}) and target ({len(y)}) differ in length.")
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("inf")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    tp = np.cumsum(y)
    called = np.arange(1, len(s) + 1)
    # a threshold equal to s[i] calls every score >= s[i] positive: keep the last index of each run
    last = np.r_[s[1:] != s[:-1], True]
    f1 = 2 * tp[last] / (called[last] + n_pos)
    return float(s[last][int(np.argmax(f1))])
