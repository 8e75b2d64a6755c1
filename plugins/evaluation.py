"""Frozen-feature evaluation shared by every method: embed a data set with a frozen encoder, then
weighted kNN, linear probe and effective rank (``plugins.metrics`` holds the maths)."""

from __future__ import annotations

import torch
from torch import nn

from plugins.data import ImageTensorDataset
from plugins.metrics import effective_rank, knn_accuracy, linear_probe
from plugins.progress import phase

__all__ = ["resolve_device", "embed", "evaluate_representation"]


def resolve_device(device: torch.device | str | None = None) -> torch.device:
    """``device``, or CUDA when available, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@torch.no_grad()
def embed(
    encoder: nn.Module,
    images: torch.Tensor,
    batch_size: int = 512,
    device: torch.device | str | None = None,
    size: int | None = None,
) -> torch.Tensor:
    """Frozen features (N, D) of ``images`` (N, C, H, W) in eval mode, on the CPU."""
    device = resolve_device(device) if device is not None else next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size].to(device)
        if size is not None and x.shape[-1] != size:
            x = nn.functional.interpolate(
                x, size=(size, size), mode="bilinear", align_corners=False
            )
        out.append(encoder(x).float().cpu())
    encoder.train(was_training)
    return torch.cat(out)


def evaluate_representation(
    encoder: nn.Module,
    train_set: ImageTensorDataset,
    test_set: ImageTensorDataset,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """kNN (k=200, t=0.1) and linear-probe accuracy of frozen features, plus effective rank of test features.

    Each phase (embedding, kNN, linear probe) shows its elapsed time unless ``progress=False``."""
    n = len(train_set) + len(test_set)
    with phase(f"embedding {n} images", show=progress):
        ztr = embed(encoder, train_set.images, device=device)
        zte = embed(encoder, test_set.images, device=device)
    with phase("kNN", show=progress):
        knn = knn_accuracy(ztr, train_set.labels, zte, test_set.labels, k=min(200, len(ztr)))
    with phase("linear probe", show=progress):
        linear = linear_probe(ztr, train_set.labels, zte, test_set.labels)
    return {"knn_acc": knn, "linear_acc": linear, "effective_rank": effective_rank(zte)}
