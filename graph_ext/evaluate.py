"""Node-classification protocol of GRACE and ARIEL (Zhu et al., 2020, Sec. 5.1; Feng et al., WWW 2022,
Sec. 5.1): L2-normalised frozen embeddings, random splits of ``train_ratio`` train / rest test,
logistic regression whose C is chosen by 5-fold cross-validation over 2^-10 .. 2^9, accuracy
(= micro-F1) averaged over the splits.

``classifier="ovr"`` is the authors' evaluation exactly: labels one-hot encoded, a
``GridSearchCV`` over ``OneVsRestClassifier(LogisticRegression(solver="liblinear"))`` with 5
unshuffled folds (scikit-learn's choice for a multilabel target) scored by its default (exact-match)
accuracy, prediction by the largest class probability, splits by ``train_test_split(test_size=
1 - train_ratio)``. The splits are independent, so ``n_jobs`` runs them in parallel threads
(liblinear releases the GIL); each split's result does not depend on ``n_jobs``.
``classifier="multinomial"`` fits a softmax regression along the same C path with warm starts
(``LogisticRegressionCV``, Newton-CG): about ten times faster on a CPU, not the authors' model.

Nodes whose label is negative are unlabelled: they are left out of the splits and counted
(``unlabelled`` in the result).
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np
import torch

__all__ = ["evaluate_node_embeddings", "split_indices", "C_GRID"]

C_GRID = tuple(float(c) for c in 2.0 ** np.arange(-10, 10))  # GRACE / ARIEL evaluation grid


def split_indices(
    n: int, train_ratio: float, seed: int, classifier: str = "multinomial"
) -> tuple[np.ndarray, np.ndarray]:
    """``(train, test)`` positions among ``n`` labelled nodes of the split with ``seed``: the split
    each classifier's protocol draws (``train_test_split`` permutes positions only, so splitting
    the positions gives the same partition as splitting the arrays). ``ovr`` passes
    ``test_size=1 - train_ratio`` as the reference evaluation, ``multinomial`` ``train_size``;
    the two can round to different sizes."""
    from sklearn.model_selection import train_test_split

    size = {"test_size": 1 - train_ratio} if classifier == "ovr" else {"train_size": train_ratio}
    return train_test_split(np.arange(n), **size, random_state=seed)


def _ovr_split(
    x: np.ndarray, onehot: np.ndarray, train_ratio: float, seed: int, folds: int, c_grid
) -> tuple[float, float]:
    """One split of the authors' protocol: ``(accuracy %, chosen C)``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.multiclass import OneVsRestClassifier

    tr, te = split_indices(len(x), train_ratio, seed, "ovr")
    xtr, xte, ytr, yte = x[tr], x[te], onehot[tr], onehot[te]
    clf = GridSearchCV(
        OneVsRestClassifier(LogisticRegression(solver="liblinear")),
        {"estimator__C": list(c_grid)},
        cv=folds,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # liblinear chatter, classes absent from a fold
        clf.fit(xtr, ytr)
        pred = clf.predict_proba(xte).argmax(1)
    acc = 100.0 * float((pred == yte.argmax(1)).mean())
    return acc, float(clf.best_params_["estimator__C"])


def _multinomial_split(
    x: np.ndarray, labels: np.ndarray, train_ratio: float, seed: int, folds: int, c_grid
) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV

    tr, te = split_indices(len(x), train_ratio, seed, "multinomial")
    xtr, xte, ytr, yte = x[tr], x[te], labels[tr], labels[te]
    counts = np.bincount(ytr)
    cv = int(min(folds, counts[counts > 0].min()))
    if len(np.unique(ytr)) < 2:
        return 100.0 * float((yte == ytr[0]).mean()), float("nan")
    if cv >= 2:
        clf = LogisticRegressionCV(Cs=list(c_grid), cv=cv, solver="newton-cg", max_iter=1000)
    else:
        clf = LogisticRegression(solver="newton-cg", max_iter=1000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.fit(xtr, ytr)
    c = float(clf.C_[0]) if hasattr(clf, "C_") else float(clf.C)
    return 100.0 * float((clf.predict(xte) == yte).mean()), c


def evaluate_node_embeddings(
    z: torch.Tensor,
    y: torch.Tensor,
    splits: int = 20,
    train_ratio: float = 0.1,
    seed: int = 0,
    folds: int = 5,
    c_grid: tuple[float, ...] = C_GRID,
    classifier: str = "multinomial",
    progress: bool = False,
    n_jobs: int = 1,
) -> dict[str, Any]:
    """Mean and standard deviation of test accuracy over random splits.

    Args:
        z: (N, D) node embeddings (L2-normalised here).
        y: (N,) integer labels; negative = unlabelled (left out, counted).
        splits: number of random splits.
        train_ratio: fraction of the labelled nodes used to train the classifier (the rest test).
        seed: seed of the splits (split ``k`` uses ``seed + k``).
        folds: cross-validation folds for C (multinomial: reduced to the smallest training class
            count on tiny graphs, and C = 1 without search below 2).
        c_grid: candidate C values.
        classifier: ``"ovr"`` (the authors' one-vs-rest liblinear grid search, exactly) or
            ``"multinomial"`` (fast softmax regression with a warm-started C path).
        progress: show a bar that moves once per split.
        n_jobs: splits evaluated in parallel threads (the result does not depend on it).

    Returns:
        ``{"acc_mean", "acc_std", "accs", "c", "unlabelled", "seconds"}``: accuracies in percent
        (std is the population std, ``np.std``, as in the reference evaluation), the chosen C of
        each split, the count of unlabelled nodes left out, and the evaluation's wall time.
    """
    from joblib import Parallel, delayed

    from plugins.progress import progress_bar

    start = time.perf_counter()
    if classifier not in ("multinomial", "ovr"):
        raise ValueError(f"classifier must be 'multinomial' or 'ovr', got {classifier!r}")
    x = torch.nn.functional.normalize(z.detach().float().cpu(), dim=1).numpy().astype(np.float64)
    labels = y.detach().cpu().numpy().astype(np.int64)
    if x.shape[0] != labels.shape[0]:
        raise ValueError(f"z has {x.shape[0]} rows but y has {labels.shape[0]} labels")
    known = labels >= 0
    unlabelled = int((~known).sum())
    x, labels = x[known], labels[known]
    if classifier == "ovr":
        classes = np.unique(labels)
        target = labels[:, None] == classes[None, :]  # the reference's OneHotEncoder output
        one = _ovr_split
    else:
        target, one = labels, _multinomial_split
    seeds = [seed + k for k in range(splits)]
    jobs = (delayed(one)(x, target, train_ratio, s, folds, c_grid) for s in seeds)
    results = []
    with progress_bar(total=splits, desc="node classification", show=progress, unit="split") as bar:
        for r in Parallel(n_jobs=n_jobs, prefer="threads", return_as="generator")(jobs):
            results.append(r)
            bar.update()
    accs = [r[0] for r in results]
    return {
        "acc_mean": float(np.mean(accs)),
        "acc_std": float(np.std(accs)),
        "accs": accs,
        "c": [r[1] for r in results],
        "unlabelled": unlabelled,
        "seconds": time.perf_counter() - start,
    }
