"""Images and labels stored as arrays: ``.npz`` (keys ``images``/``x`` and ``labels``/``y``) or a
``.pt`` file holding a dict with the same keys. Images (N, C, H, W) or (N, H, W); uint8 is scaled to [0, 1]."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from plugins.data.loaders import ImageTensorDataset, check_finite
from plugins.errors import UserInputError


def _pick(d: dict, keys: tuple[str, ...], path: Path) -> object:
    for k in keys:
        if k in d:
            return d[k]
    raise UserInputError(
        f"{path} has no '{keys[0]}' array (found: {', '.join(map(str, d.keys()))})."
    )


def load_array_file(path: str | Path) -> ImageTensorDataset:
    path = Path(path)
    if not path.exists():
        raise UserInputError(f"array file {path} does not exist.")
    try:
        if path.suffix == ".npz":
            with np.load(path) as f:
                d = {k: f[k] for k in f.files}
        elif path.suffix in (".pt", ".pth"):
            d = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise UserInputError(f"{path}: expected a .npz or .pt file, got '{path.suffix}'.")
    except (OSError, ValueError, RuntimeError) as e:
        raise UserInputError(f"cannot read {path}: {e}.") from None
    x = torch.as_tensor(np.asarray(_pick(d, ("images", "x"), path)))
    y = torch.as_tensor(np.asarray(_pick(d, ("labels", "y"), path))).long().reshape(-1)
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4:
        raise UserInputError(
            f"{path}: images must be (N, C, H, W) or (N, H, W), got shape {tuple(x.shape)}."
        )
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    check_finite(x, f"images in {path}")
    classes = [str(c) for c in range(int(y.max()) + 1)] if len(y) else []
    return ImageTensorDataset(x, y, classes)
