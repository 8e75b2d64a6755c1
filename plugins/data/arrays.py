"""Images and labels stored as arrays: ``.npz`` (keys ``images``/``x`` and ``labels``/``y``) or a
``.pt`` file holding a dict with the same keys. Images (N, C, H, W) or (N, H, W); uint8 is scaled to [0, 1].

A single ``.npy`` array is not accepted: it has no labels (save both with
``numpy.savez("data.npz", images=x, labels=y)``)."""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from plugins.checkpoint import load_checkpoint
from plugins.data.loaders import ImageTensorDataset, check_finite, not_a_data_set
from plugins.errors import UserInputError


def _pick(d: dict, keys: tuple[str, ...], path: Path) -> object:
    for k in keys:
        if k in d:
            return d[k]
    raise UserInputError(
        f"{path} has no '{keys[0]}' array (found: {', '.join(map(str, d.keys()))})."
    )


def _numeric(value: object, what: str, path: Path) -> torch.Tensor:
    try:
        t = torch.as_tensor(np.asarray(value))
    except (TypeError, ValueError, RuntimeError):
        t = None
    if t is None or t.dtype == torch.bool or t.is_complex():
        kind = getattr(value, "dtype", type(value).__name__)
        raise UserInputError(f"{path}: {what} must be real numbers, got {kind}.")
    return t


def load_array_file(path: str | Path) -> ImageTensorDataset:
    """An :class:`ImageTensorDataset` from an ``.npz`` or ``.pt`` file (see the module docstring).

    Every problem is one sentence naming the file: a missing, truncated or foreign file, missing
    keys, a wrong shape, NaN or infinite values (with their count), labels that are not
    non-negative integers."""
    path = Path(path)
    if not path.exists():
        raise UserInputError(f"array file {path} does not exist.")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        try:
            with np.load(path) as f:
                d = {k: f[k] for k in f.files}
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as e:
            # np.load refuses object arrays (allow_pickle=False), so no code runs from the file
            raise UserInputError(f"cannot read array file {path}: {e}.") from None
    elif suffix in (".pt", ".pth"):
        d = load_checkpoint(path, what="array file")  # weights_only: tensors and containers only
    else:
        raise UserInputError(not_a_data_set(path))
    x = _numeric(_pick(d, ("images", "x"), path), "images", path)
    y = _numeric(_pick(d, ("labels", "y"), path), "labels", path).reshape(-1)
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4:
        raise UserInputError(
            f"{path}: images must be (N, C, H, W) or (N, H, W), got shape {tuple(x.shape)}."
        )
    if len(x) != len(y):
        raise UserInputError(f"{path} holds {len(x)} images but {len(y)} labels.")
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    check_finite(x, f"images in {path}")
    if y.is_floating_point():
        check_finite(y, f"labels in {path}")
        if not bool((y == y.round()).all()):
            raise UserInputError(f"{path}: labels must be whole class numbers, got fractions.")
    y = y.long()
    if len(y) and int(y.min()) < 0:
        raise UserInputError(
            f"{path}: labels must be class numbers 0, 1, ..., got {int((y < 0).sum())} negative."
        )
    classes = [str(c) for c in range(int(y.max()) + 1)] if len(y) else []
    return ImageTensorDataset(x, y, classes)
