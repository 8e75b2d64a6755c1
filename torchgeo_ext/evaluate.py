"""Evaluation as in the paper: sliding window (256, stride 128) over whole scenes, then OA, Kappa,
per-class F1/IoU, mIoU and mean F1 from one dataset-level confusion matrix."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from plugins.metrics import confusion_matrix, segmentation_scores


def _starts(length: int, window: int, stride: int) -> list[int]:
    if length <= window:
        return [0]
    s = list(range(0, length - window + 1, stride))
    if s[-1] != length - window:
        s.append(length - window)  # last window flush with the edge, so every pixel is covered
    return s


def blend_weights(
    window: int, blend: str = "linear", device: torch.device | str = "cpu"
) -> torch.Tensor:
    """(window, window) weight of each pixel of a window when overlapping windows are averaged.

    ``"linear"``: a separable tent, ``w(i) = min(i + 1/2, window - i - 1/2) / (window / 2)``: 1 at
    the centre, ``1 / window`` at the edges, so each pixel is predicted mostly by the windows it is
    central in and window edges leave no seams. ``"mean"``: uniform (the paper's plain average).
    """
    if blend == "mean":
        return torch.ones(window, window, device=device)
    if blend != "linear":
        raise ValueError(f"blend must be 'linear' or 'mean', got {blend!r}")
    i = torch.arange(window, device=device, dtype=torch.float32) + 0.5
    w = torch.minimum(i, window - i) / (window / 2)
    return w[:, None] * w[None, :]


@torch.no_grad()
def sliding_window_logits(
    model: nn.Module,
    image: torch.Tensor,
    num_classes: int,
    window: int = 256,
    stride: int = 128,
    batch_size: int = 8,
    blend: str = "linear",
) -> torch.Tensor:
    """Weighted average of the class probabilities of overlapping windows over one image
    (C, H, W) -> (K, H, W), weights :func:`blend_weights` (``blend``).

    Images smaller than the window are reflect-padded (zero-padded if too small to reflect) and
    cropped back; the model runs in eval mode on the image's device.
    """
    c, h, w = image.shape
    ph, pw = max(0, window - h), max(0, window - w)
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "constant"
        image = F.pad(image[None], (0, pw, 0, ph), mode=mode)[0]
    H, W = image.shape[-2:]
    probs = torch.zeros(num_classes, H, W, device=image.device)
    count = torch.zeros(1, H, W, device=image.device)
    weight = blend_weights(window, blend, image.device)
    boxes = [(r, q) for r in _starts(H, window, stride) for q in _starts(W, window, stride)]
    was_training = model.training
    model.eval()
    for i in range(0, len(boxes), batch_size):
        chunk = boxes[i : i + batch_size]
        batch = torch.stack([image[:, r : r + window, q : q + window] for r, q in chunk])
        out = model(batch).float().softmax(1)
        for (r, q), p in zip(chunk, out):
            probs[:, r : r + window, q : q + window] += p * weight
            count[:, r : r + window, q : q + window] += weight
    model.train(was_training)
    return (probs / count)[:, :h, :w]


def evaluate_scenes(
    model: nn.Module,
    scenes: Iterable[tuple[np.ndarray, np.ndarray]],
    num_classes: int,
    window: int = 256,
    stride: int = 128,
    ignore_index: int | None = 255,
    device: torch.device | str = "cpu",
) -> tuple[dict, list[np.ndarray]]:
    """Scores over all scenes (image (C, H, W) uint8/float, mask (H, W)); returns scores + predictions."""
    from torchgeo_ext.data import to_unit

    cm = torch.zeros(num_classes, num_classes, dtype=torch.long)
    preds = []
    for image, mask in scenes:
        x = to_unit(image).to(device)
        # the paper's protocol: a plain average of the overlapping windows
        pred = sliding_window_logits(model, x, num_classes, window, stride, blend="mean")
        pred = pred.argmax(0).cpu()
        cm += confusion_matrix(
            torch.from_numpy(mask.astype(np.int64)), pred, num_classes, ignore_index
        )
        preds.append(pred.numpy().astype(np.uint8))
    scores = segmentation_scores(cm)
    scores["confusion"] = cm.tolist()
    return scores, preds
