"""Data for CLAWS: the embedded digits default, the shared plant-seedling images, or the user's
class-per-folder images / array file. Class names are the weak labels."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from plugins.data import (
    ImageTensorDataset,
    check_finite,
    load_digits,
    load_image_folder,
    shared_path,
)
from plugins.errors import UserInputError

__all__ = ["load_claws_data", "weak_split"]


def weak_split(
    labels: torch.Tensor, test_fraction: float = 0.3, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class split into train/test indices. Every class with two or more samples keeps at least
    one on each side; a class with a single sample goes to train only (with a warning), since a
    test cluster of one image cannot be scored and a class with no training image is never seen."""
    g = torch.Generator().manual_seed(seed)
    train, test, singles = [], [], []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        if len(idx) < 2:
            singles.append(c)
            train.append(idx)
            continue
        k = min(max(1, round(test_fraction * len(idx))), len(idx) - 1)
        test.append(idx[:k])
        train.append(idx[k:])
    if singles:
        warnings.warn(
            f"{len(singles)} class(es) have a single image (label {singles}); used for training only.",
            stacklevel=2,
        )
    if not test:
        raise UserInputError("every class has a single image; CLAWS needs classes with 2+ images.")
    return torch.cat(train).sort().values, torch.cat(test).sort().values


def _folder_pair(root: Path) -> tuple[Path, Path] | None:
    """``root/train/<class>`` and ``root/test/<class>`` when both exist."""
    tr, te = root / "train", root / "test"
    if tr.is_dir() and te.is_dir() and any(p.is_dir() for p in tr.iterdir()):
        return tr, te
    return None


def load_claws_data(
    data: str | None, size: int | None = None, seed: int = 0
) -> tuple[ImageTensorDataset, ImageTensorDataset, str]:
    """Train and test sets and a display name.

    ``None``/``"digits"``: scikit-learn digits (resized to ``size``, default 16), a 70/30 split.
    ``"crops"``: the shared Plant Seedlings folder (its train/test split). A folder with ``train/``
    and ``test/`` class folders uses that split; any other class-per-folder image set or ``.npz``/
    ``.pt`` array file is split 70/30 per class. Folder images are read as RGB (grayscale and RGBA
    files are converted) at ``size`` (default 64).
    """
    if data in (None, "digits"):
        d = load_digits(size=size or 16)
        tr, te = weak_split(d.labels, seed=seed)
        return d.subset(tr), d.subset(te), "digits"
    path = shared_path("crops") if data == "crops" else Path(data)
    if not path.exists():
        raise UserInputError(f"data path {path} does not exist.")
    if path.suffix in (".npz", ".pt", ".pth"):
        from plugins.data.arrays import load_array_file

        d = load_array_file(path)
        if size is not None and d.images.shape[-1] != size:
            d.images = torch.nn.functional.interpolate(
                d.images, size=(size, size), mode="bilinear", align_corners=False
            ).clamp(0, 1)
        tr, te = weak_split(d.labels, seed=seed)
        return d.subset(tr), d.subset(te), str(path)
    pair = _folder_pair(path)
    if pair is not None:
        train_set = load_image_folder(pair[0], size=size or 64, channels=3)
        test_set = load_image_folder(pair[1], size=size or 64, channels=3)
        if train_set.classes != test_set.classes:
            raise UserInputError(
                f"{pair[0]} and {pair[1]} must hold the same class folders, got "
                f"{train_set.classes} and {test_set.classes}."
            )
    else:
        d = load_image_folder(path, size=size or 64, channels=3)
        tr, te = weak_split(d.labels, seed=seed)
        train_set, test_set = d.subset(tr), d.subset(te)
    check_finite(train_set.images, f"images in {path}")
    return train_set, test_set, "crops" if data == "crops" else str(path)
