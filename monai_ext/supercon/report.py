"""What a SuperCon run reports about its data and its operating point (issue 21).

* :func:`say`: one line (``supercon: ...``) on standard output, warnings on standard error, so a
  user sees the data summary, the duplicate report and threshold warnings while the run goes on.
* :func:`write_predictions`: ``predictions.csv`` with one row per image: ``path, group, label,
  p_<class>... , split`` (plus fixed columns such as ``seed`` and ``method`` in ``reproduce``).
* :func:`group_metrics`: the positive class scored per group (patient or lesion): a group is
  positive when any of its images is, its score is the highest positive probability of its images
  (the usual "any lesion" reading), and it is called positive when any image is.
* :func:`threshold_info`: how many validation positives stand behind a threshold, with a warning
  below ``--set min_val_positives``; an F1-optimal threshold chosen on a handful of positives is
  noise (one CE seed of the 2% reproduction called 388 of 429 test images melanoma).
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["say", "write_predictions", "group_metrics", "threshold_info"]


def say(text: str, warning: bool = False) -> None:
    """Print ``supercon: text`` on standard output (``supercon: warning: text`` on standard error
    with ``warning``)."""
    if warning:
        print(f"supercon: warning: {text}", file=sys.stderr, flush=True)
    else:
        print(f"supercon: {text}", flush=True)


def write_predictions(
    path: Path,
    classes: Sequence[str],
    rows: Sequence[Mapping[str, Any]],
    append: bool = False,
) -> Path:
    """Write (or append to) ``predictions.csv``.

    Each item of ``rows`` is one block: ``paths`` (N,), ``groups`` (N,), ``labels`` (N,) class
    indices, ``probs`` (N, K), ``split`` (a name) and optional ``extra`` (column -> value, the
    same for the block). Columns: ``[extra...], path, group, label, p_<class>..., split``.
    """
    from plugins.reporting import atomic_write_bytes

    extra = list(rows[0].get("extra", {})) if rows else []
    header = [*extra, "path", "group", "label", *(f"p_{c}" for c in classes), "split"]
    old = path.read_text() if append and path.exists() else ""

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            if old:
                f.write(old)
            w = csv.writer(f)
            if not old:
                w.writerow(header)
            for block in rows:
                probs = np.asarray(block["probs"], dtype=np.float64)
                fixed = [block.get("extra", {})[k] for k in extra]
                names = np.asarray(classes, dtype=object)[np.asarray(block["labels"])]
                for p, g, y, pr in zip(block["paths"], block["groups"], names, probs):
                    w.writerow([*fixed, str(p), g, y, *(f"{v:.6f}" for v in pr), block["split"]])

    atomic_write_bytes(path, write)
    return path


def group_metrics(
    scores: np.ndarray,
    positive: np.ndarray,
    called: np.ndarray,
    groups: Sequence[str],
    threshold: float | None = None,
) -> dict[str, float]:
    """Per-group (patient or lesion) scores of the positive class.

    Args:
        scores: (N,) positive-class probabilities.
        positive: (N,) bool, the image is of the positive class.
        called: (N,) bool, the argmax calls the image positive.
        groups: (N,) group names.
        threshold: the operating point, if any (``scores >= threshold``).

    Returns ``group_n``, ``group_positives``, ``group_roc_auc``, ``group_positive_f1`` (argmax)
    and, with ``threshold``, ``group_positive_f1_at_threshold`` and
    ``group_positive_predicted_at_threshold``.
    """
    from plugins.metrics import binary_scores

    g = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)[1]
    n = int(g.max()) + 1 if len(g) else 0
    top = np.full(n, -np.inf)
    np.maximum.at(top, g, np.asarray(scores, dtype=np.float64))
    truth = np.bincount(g, weights=np.asarray(positive, dtype=np.float64), minlength=n) > 0
    hit = np.bincount(g, weights=np.asarray(called, dtype=np.float64), minlength=n) > 0
    tp, fp, fn = (truth & hit).sum(), (~truth & hit).sum(), (truth & ~hit).sum()
    out = {
        "group_n": float(n),
        "group_positives": float(truth.sum()),
        "group_roc_auc": binary_scores(top, truth.astype(np.int64))["roc_auc"],
        "group_positive_f1": float(2 * tp / max(1, 2 * tp + fp + fn)),
    }
    if threshold is not None:
        at = binary_scores(top, truth.astype(np.int64), threshold)
        out["group_positive_f1_at_threshold"] = at["f1"]
        out["group_positive_predicted_at_threshold"] = float((top >= threshold).sum())
    return out


def threshold_info(
    source: str, positives: int, images: int, minimum: int, where: str = ""
) -> dict[str, Any]:
    """The record of a threshold: where it was chosen and on how many positives; warns (one line)
    when fewer than ``minimum`` positives stand behind it."""
    info = {
        "threshold_from": source,
        "threshold_positives": int(positives),
        "threshold_images": int(images),
    }
    if positives < minimum:
        info["threshold_warning"] = (
            f"the threshold{where} rests on {positives} positive image(s) of {images} "
            f"({source}), fewer than min_val_positives={minimum}: treat it as noise, "
            "or use --set threshold_from=cv (out-of-fold scores on the training split)"
        )
        say(info["threshold_warning"], warning=True)
    return info
