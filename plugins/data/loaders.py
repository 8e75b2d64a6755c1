"""Loaders that return images as float tensors (N, C, H, W) in [0, 1] with integer labels."""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from plugins.errors import UserInputError

ENV_VAR = "CONTRASTIVE_PLUGINS_DATA"
_REPO_ROOT = Path(__file__).resolve().parents[2]


def shared_data_dir(required: bool = True) -> Path | None:
    """Folder of the shared real data sets.

    ``$CONTRASTIVE_PLUGINS_DATA`` if set, else ``../shared/data`` beside the repository checkout.
    Raises :class:`UserInputError` naming the paths tried when ``required`` and absent, else ``None``.
    """
    candidates = []
    if os.environ.get(ENV_VAR):
        candidates.append(Path(os.environ[ENV_VAR]))
    candidates.append(_REPO_ROOT.parent / "shared" / "data")
    for c in candidates:
        if c.is_dir():
            return c
    if required:
        raise UserInputError(
            f"shared data folder not found (tried {', '.join(str(c) for c in candidates)}); set {ENV_VAR} to its path."
        )
    return None


def shared_path(*parts: str, required: bool = True) -> Path | None:
    """A path inside the shared data folder, e.g. ``shared_path("cifar10", "cifar-10-batches-py")``."""
    root = shared_data_dir(required=required)
    if root is None:
        return None
    path = root.joinpath(*parts)
    if not path.exists():
        if required:
            raise UserInputError(f"shared data set missing: {path} does not exist.")
        return None
    return path


@dataclass
class ImageTensorDataset(Dataset):
    """Images (N, C, H, W) float in [0, 1] and labels (N,) int64, with class names."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise UserInputError(
                f"images must be (N, C, H, W), got shape {tuple(self.images.shape)}."
            )
        if len(self.images) != len(self.labels):
            raise UserInputError(f"{len(self.images)} images but {len(self.labels)} labels.")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.labels[i]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, index: torch.Tensor | np.ndarray) -> ImageTensorDataset:
        index = torch.as_tensor(index, dtype=torch.long)
        return ImageTensorDataset(self.images[index], self.labels[index], self.classes)


def check_finite(x: torch.Tensor, what: str) -> torch.Tensor:
    """Raise one clear sentence when ``x`` holds NaN or infinity."""
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        raise UserInputError(f"{what} contains {bad} NaN or infinite values; clean the data first.")
    return x


def load_digits(size: int | None = None) -> ImageTensorDataset:
    """scikit-learn's real handwritten digits (1,797 images, 8x8, 10 classes) as (N, 1, 8, 8) in [0, 1].

    Args:
        size: optional side length to resize to (bilinear), e.g. 32 for a ResNet stem.
    """
    from sklearn.datasets import load_digits as _load

    d = _load()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if size is not None and size != 8:
        x = torch.nn.functional.interpolate(
            x, size=(size, size), mode="bilinear", align_corners=False
        ).clamp(0, 1)
    return ImageTensorDataset(
        x, torch.tensor(d.target, dtype=torch.long), [str(i) for i in range(10)]
    )


def cifar10_batch_files(root: str | Path | None = None, train: bool = True) -> list[Path]:
    """The CIFAR-10 pickle batches under ``root`` (the ``cifar-10-batches-py`` folder or its
    parent; default: the shared data set): the ``data_batch_*`` files that exist when ``train``,
    else ``test_batch``; one sentence when there are none."""
    root = Path(root) if root is not None else shared_path("cifar10", "cifar-10-batches-py")
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    if not root.is_dir():
        raise UserInputError(f"CIFAR-10 folder {root} does not exist.")
    files = sorted(root.glob("data_batch_*")) if train else [root / "test_batch"]
    files = [f for f in files if f.is_file()]
    if not files:
        raise UserInputError(
            f"no CIFAR-10 {'data_batch_*' if train else 'test_batch'} file in {root}."
        )
    return files


def load_cifar10(
    root: str | Path | None = None, train: bool = True, limit: int | None = None
) -> ImageTensorDataset:
    """CIFAR-10 from python pickle batches (``data_batch_*``, ``test_batch``).

    Reads whichever ``data_batch_*`` files exist (the shared subset holds only ``data_batch_1``).

    Args:
        root: the ``cifar-10-batches-py`` folder or its parent; default: the shared data set.
        train: training batches or ``test_batch``.
        limit: keep the first ``limit`` images (rows alternate by class in the shared subset).
    """
    files = cifar10_batch_files(root, train)
    root = files[0].parent  # the cifar-10-batches-py folder
    xs, ys = [], []
    for f in files:
        d = load_cifar_pickle(f)
        try:
            xs.append(np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(d[b"labels"], dtype=np.int64).reshape(-1))
        except (KeyError, TypeError, ValueError) as e:
            raise UserInputError(
                f"CIFAR-10 batch {f} does not hold 'data' (N x 3072 uint8) and 'labels' ({e})."
            ) from None
        if len(xs[-1]) != len(ys[-1]):
            raise UserInputError(
                f"CIFAR-10 batch {f} holds {len(xs[-1])} images but {len(ys[-1])} labels."
            )
    x, y = np.concatenate(xs), np.concatenate(ys)
    if limit is not None:
        x, y = x[:limit], y[:limit]
    classes = [str(i) for i in range(10)]
    meta = root / "batches.meta"
    if meta.exists():
        m = load_cifar_pickle(meta)
        names = m.get(b"label_names")
        if names:
            classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return ImageTensorDataset(torch.from_numpy(x).float() / 255.0, torch.from_numpy(y), classes)


class _Refused(pickle.UnpicklingError):
    pass


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles only what CIFAR-10 batches hold (dicts, lists, bytes, numpy arrays), so that a
    foreign pickle cannot run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise _Refused(f"refusing to unpickle {module}.{name}")


def load_cifar_pickle(path: Path) -> dict:
    """One CIFAR-10 python pickle as a dict (bytes keys), unpickling only what such files hold;
    a foreign, truncated or unreadable file is one sentence."""
    try:
        with open(path, "rb") as fh:
            d = _CifarUnpickler(fh, encoding="bytes").load()
    except _Refused as e:
        raise UserInputError(
            f"CIFAR-10 file {path} is not a CIFAR-10 python batch ({e})."
        ) from None
    except (
        pickle.UnpicklingError,
        EOFError,
        OSError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
    ) as e:
        raise UserInputError(
            f"CIFAR-10 file {path} is truncated or unreadable ({type(e).__name__}: {e})."
        ) from None
    if not isinstance(d, dict):
        raise UserInputError(f"CIFAR-10 file {path} holds a {type(d).__name__}, not a dict.")
    return d


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def load_image_folder(
    root: str | Path, size: int = 64, channels: int = 3, limit_per_class: int | None = None
) -> ImageTensorDataset:
    """Class-per-folder images (``root/<class>/<image>``), resized to ``size`` x ``size``.

    Grayscale and RGBA files are converted to ``channels`` (1 or 3). A truncated or unreadable file
    raises an error naming the file.
    """
    from PIL import Image

    root = Path(root)
    if root.is_file():
        raise UserInputError(not_a_data_set(root))
    if not root.is_dir():
        raise UserInputError(f"image folder {root} does not exist.")
    # hidden folders (.ipynb_checkpoints, .DS_Store-like) are never classes
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UserInputError(f"image folder {root} has no class sub-folders.")
    mode = {1: "L", 3: "RGB"}.get(channels)
    if mode is None:
        raise UserInputError(f"channels must be 1 or 3 for image folders, got {channels}.")
    xs, ys = [], []
    for label, name in enumerate(classes):
        files = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if limit_per_class is not None:
            files = files[:limit_per_class]
        for f in files:
            try:
                with Image.open(f) as im:
                    im = im.convert(mode).resize((size, size), Image.BILINEAR)
                    a = np.asarray(im, dtype=np.uint8)
            except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
                # UnidentifiedImageError and "image file is truncated" are OSErrors
                reason = str(e).rstrip(".") or type(e).__name__
                raise UserInputError(
                    f"cannot read image {f} (truncated or not an image: {reason}); "
                    "remove or replace the file."
                ) from None
            xs.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
            ys.append(label)
    if not xs:
        raise UserInputError(
            f"image folder {root} has no images ({', '.join(sorted(IMAGE_SUFFIXES))})."
        )
    x = torch.from_numpy(np.stack(xs)).float() / 255.0
    return ImageTensorDataset(x, torch.tensor(ys, dtype=torch.long), classes)


def stratified_split(
    labels: torch.Tensor, test_fraction: float = 0.3, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a class-stratified train/test split (scikit-learn ``train_test_split``)."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    return train_test_split(
        idx, test_size=test_fraction, stratify=labels.numpy(), random_state=seed
    )


ACCEPTED_DATA = (
    "digits, cifar10, an .npz file with arrays 'images' (N, C, H, W) or (N, H, W) and 'labels' (N,) "
    "(numpy.savez), a .pt file holding a dict of the same tensors, a CIFAR-10 batches folder or a "
    "class-per-folder image folder"
)


def not_a_data_set(path: Path) -> str:
    if path.suffix.lower() == ".npy":
        return (
            f"data path {path} is a .npy file, which holds one array and no labels; "
            f"accepted: {ACCEPTED_DATA}."
        )
    kind = f"a '{path.suffix}' file" if path.suffix else "a file without extension"
    return f"data path {path} is {kind}, not a data set; accepted: {ACCEPTED_DATA}."


def load_train_test(
    data: str | None, size: int | None = None
) -> tuple[ImageTensorDataset, ImageTensorDataset, str]:
    """Train and test sets of an image data set named or found at ``data``; returns ``(train, test, name)``.

    ``None`` or ``"digits"``: scikit-learn digits (70/30 stratified split); ``"cifar10"``: the shared
    subset (train batch / test batch); a ``.npz``/``.pt`` array file (see
    :func:`plugins.data.arrays.load_array_file`); a folder: CIFAR pickle batches or class-per-folder
    images. Any other file (a ``.npy`` array has no labels) is refused naming what is accepted."""
    if data in (None, "digits"):
        d = load_digits(size=size)
        tr, te = stratified_split(d.labels)
        return d.subset(tr), d.subset(te), "digits"
    if data == "cifar10":
        return load_cifar10(train=True), load_cifar10(train=False), "cifar10"
    path = Path(data)
    if not path.exists():
        raise UserInputError(f"data path {path} does not exist.")
    if path.is_file() and path.suffix.lower() not in (".npz", ".pt", ".pth"):
        raise UserInputError(not_a_data_set(path))
    if path.suffix.lower() in (".npz", ".pt", ".pth"):
        from plugins.data.arrays import load_array_file

        return (*_split(load_array_file(path), path), str(path))
    if (path / "cifar-10-batches-py").is_dir() or (path / "test_batch").exists():
        return load_cifar10(path, train=True), load_cifar10(path, train=False), str(path)
    return (*_split(load_image_folder(path, size=size or 64), path), str(path))


def _split(d: ImageTensorDataset, path: Path) -> tuple[ImageTensorDataset, ImageTensorDataset]:
    """70/30 class-stratified train/test split of a user's data set, one sentence when impossible."""
    try:
        tr, te = stratified_split(d.labels)
    except ValueError as e:
        raise UserInputError(
            f"{path}: cannot split {len(d)} images into train and test sets by class ({e})."
        ) from None
    return d.subset(tr), d.subset(te)
