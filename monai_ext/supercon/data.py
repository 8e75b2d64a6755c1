"""Data for SuperCon: ISIC-style CSV + image folder, class-per-folder images, the shared ISIC copy,
leakage-free splits and a class-balanced sampler.

Splits (issue 6): the SuperCon reference's test list shares 80% of its images with its training
list. Here a patient (``patient_id`` when the metadata has it) or an exact-duplicate image (same
bytes, found by content hash) always lands on one side only: both define groups, groups are merged
(union-find) and scikit-learn's ``StratifiedGroupKFold`` splits the merged groups by class.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from plugins.errors import UserInputError

__all__ = [
    "ImageTable",
    "read_image",
    "check_finite_array",
    "file_hash",
    "load_isic_csv",
    "load_shared_isic",
    "load_class_folders",
    "load_table",
    "load_images",
    "split_indices",
    "check_classes_present",
    "subsample_class",
    "class_balanced_sampler",
    "bundle_datalists",
]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}


@dataclass
class ImageTable:
    """Image files with integer labels (N,), optional patient groups, and class names."""

    paths: list[Path]
    labels: np.ndarray
    classes: list[str]
    groups: list[str] | None = None

    def __len__(self) -> int:
        return len(self.paths)


def read_image(path: str | Path, size: int, channels: int = 3) -> np.ndarray:
    """One image as uint8 (C, size, size).

    A truncated, corrupt or unreadable file, and a floating-point image (TIFF mode ``F``) with NaN
    or infinite pixels, raise one :class:`UserInputError` sentence naming the file."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode == "F":  # float pixels: NaN/inf would silently become 0 in the conversion
                check_finite_array(np.asarray(im), f"image {path}")
            im = im.convert("RGB" if channels == 3 else "L").resize((size, size), Image.BILINEAR)
            a = np.asarray(im, dtype=np.uint8)
    except UserInputError:
        raise
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for broken files
        raise UserInputError(
            f"image {path} is truncated or unreadable ({error_reason(e)})."
        ) from None
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def error_reason(e: BaseException) -> str:
    """The first line of an exception's message (its type when it has none), without a final dot."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text.rstrip(".")[:160]


def check_finite_array(a: np.ndarray, what: str) -> None:
    """One sentence with ``what`` (naming the file) and the count when ``a`` holds NaN or inf."""
    if np.issubdtype(a.dtype, np.floating):
        bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
        if bad:
            raise UserInputError(
                f"{what} contains {bad} NaN or infinite values; clean the data first."
            )


def file_hash(path: str | Path) -> str:
    """SHA-1 of the file's bytes (exact-duplicate detection)."""
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def _read_csv(path: Path, required: list[str]) -> list[dict[str, str]]:
    if not path.is_file():
        raise UserInputError(f"metadata CSV {path} does not exist.")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise UserInputError(
                f"{path} is missing column(s) {missing}; it has {reader.fieldnames}."
            )
        return list(reader)


def _encode(values: list[str], classes: list[str] | None) -> tuple[np.ndarray, list[str]]:
    if classes is None:
        if all(v.strip().lstrip("-").isdigit() for v in values):
            ints = sorted({int(v) for v in values})
            classes = [str(i) for i in range(max(ints) + 1)]
        else:
            classes = sorted(set(values))
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(values) - set(index))
    if unknown:
        raise UserInputError(f"labels {unknown[:5]} are not among the classes {classes}.")
    return np.array([index[v] for v in values], dtype=np.int64), classes


def load_isic_csv(
    csv_path: str | Path,
    image_dir: str | Path | None = None,
    image_col: str = "image_name",
    label_col: str = "target",
    group_col: str | None = "patient_id",
    classes: list[str] | None = None,
) -> ImageTable:
    """ISIC 2020-style metadata (``image_name, patient_id, target, ...``) + a folder of images.

    ``image_name`` may omit the extension (``.jpg`` is tried). ``group_col`` is used when the CSV
    has it (patients never straddle a split); ``target`` is 0/1 in ISIC 2020, any label works.
    """
    csv_path = Path(csv_path)
    image_dir = Path(image_dir) if image_dir is not None else csv_path.parent
    rows = _read_csv(csv_path, [image_col, label_col])
    paths = []
    for r in rows:
        p = image_dir / r[image_col]
        if not p.suffix and not p.exists():
            p = p.with_suffix(".jpg")
        if not p.is_file():
            raise UserInputError(f"image {p} listed in {csv_path} does not exist.")
        paths.append(p)
    labels, classes = _encode([r[label_col] for r in rows], classes)
    groups = [r[group_col] for r in rows] if group_col and group_col in rows[0] else None
    return ImageTable(paths, labels, classes, groups)


def load_shared_isic(root: str | Path, task: str = "melanoma") -> ImageTable:
    """The shared ISIC copy (``labels.csv`` + ``train|test/<class>/*.jpg``), clean images only.

    ``task="melanoma"``: melanoma (1) vs the rest (0); ``"multiclass"``: the 8 usable diagnoses
    (seborrheic_keratosis has no clean image, see the folder's README). Groups are image ids.
    """
    root = Path(root)
    rows = _read_csv(root / "labels.csv", ["path", "image_id", "folder_label", "clean"])
    rows = [r for r in rows if r["clean"] == "1"]
    if task == "melanoma":
        labels = np.array([int(r["folder_label"] == "melanoma") for r in rows], dtype=np.int64)
        classes = ["other", "melanoma"]
    elif task == "multiclass":
        labels, classes = _encode([r["folder_label"] for r in rows], None)
    else:
        raise UserInputError(f"task must be 'melanoma' or 'multiclass', got {task!r}.")
    return ImageTable(
        [root / r["path"] for r in rows], labels, classes, [r["image_id"] for r in rows]
    )


def load_class_folders(root: str | Path) -> ImageTable:
    """``root/<class>/<image>`` (hidden folders are skipped)."""
    root = Path(root)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    paths, labels = [], []
    for k, name in enumerate(classes):
        files = sorted(f for f in (root / name).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        paths += files
        labels += [k] * len(files)
    if not paths:
        raise UserInputError(f"image folder {root} has no class sub-folders with images.")
    return ImageTable(paths, np.array(labels, dtype=np.int64), classes)


def load_table(path: str | Path, task: str = "melanoma") -> ImageTable:
    """Dispatch on what the user has: an ISIC CSV file, a folder with the shared ``labels.csv``
    layout, a folder with ``metadata.csv`` (ISIC 2020) or class-per-folder images."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".csv":
        return load_isic_csv(path)
    if not path.is_dir():
        raise UserInputError(f"--data {path} is neither a CSV file nor a folder.")
    if (path / "labels.csv").is_file():
        return load_shared_isic(path, task)
    if (path / "metadata.csv").is_file():
        return load_isic_csv(path / "metadata.csv")
    return load_class_folders(path)


def load_images(
    table: ImageTable, size: int, channels: int = 3, progress: bool = False
) -> torch.Tensor:
    """All images of ``table`` as uint8 (N, C, size, size); a bad file is one sentence naming it
    (see :func:`read_image`). ``progress`` shows the elapsed time (reading data does not count as
    the start of a run, so a bad file leaves no run folder)."""
    from plugins.progress import phase

    with phase(f"reading {len(table)} images", show=progress):
        return torch.from_numpy(np.stack([read_image(p, size, channels) for p in table.paths]))


def _merge_groups(n: int, *keys: list[str] | None) -> np.ndarray:
    """Union-find over items sharing any key (patient id, content hash): (N,) group ids."""
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for key in keys:
        if key is None:
            continue
        first: dict[str, int] = {}
        for i, k in enumerate(key):
            j = first.setdefault(k, i)
            if j != i:
                parent[find(i)] = find(j)
    return np.array([find(i) for i in range(n)])


def split_indices(
    labels: np.ndarray,
    groups: list[str] | None = None,
    hashes: list[str] | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, group-disjoint train/test indices.

    Items sharing a group (patient) or a content hash are merged into one group, so no patient and
    no exact-duplicate image appears on both sides; ``StratifiedGroupKFold`` keeps class ratios.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    labels = np.asarray(labels)
    if not 0 < test_fraction < 1:
        raise UserInputError(f"test_fraction must be in (0, 1), got {test_fraction}.")
    merged = _merge_groups(len(labels), groups, hashes)
    n_splits = max(2, round(1 / test_fraction))
    if len(np.unique(merged)) < n_splits:
        raise UserInputError(
            f"only {len(np.unique(merged))} patient/duplicate groups; need at least {n_splits}."
        )
    skf = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    try:
        train, test = next(skf.split(np.zeros(len(labels)), labels, merged))
    except ValueError as e:  # every class smaller than n_splits
        counts = np.bincount(labels)
        raise UserInputError(
            f"too few images per class ({', '.join(map(str, counts[counts > 0]))}) to split off "
            f"{test_fraction:.0%} stratified by class ({error_reason(e)}); add images."
        ) from None
    return np.sort(train), np.sort(test)


def check_classes_present(
    labels: np.ndarray, classes: list[str], split: str, index: np.ndarray | None = None
) -> None:
    """Raise one clear error when a class has no image in a split."""
    y = np.asarray(labels if index is None else np.asarray(labels)[index])
    empty = [c for k, c in enumerate(classes) if not (y == k).any()]
    if empty:
        raise UserInputError(
            f"class(es) {empty} have no images in the {split} split ({len(y)} images); "
            "add images or drop the class."
        )


def subsample_class(
    index: np.ndarray, labels: np.ndarray, cls: int, ratio: float, seed: int = 0
) -> np.ndarray:
    """Keep all other classes of ``index`` and as many ``cls`` items as make ``cls`` a ``ratio`` share
    (at least one)."""
    index = np.asarray(index)
    pos, neg = index[labels[index] == cls], index[labels[index] != cls]
    keep = max(1, round(ratio * len(neg) / (1 - ratio)))
    if keep >= len(pos):
        return index
    rng = np.random.default_rng(seed)
    return np.sort(np.concatenate([neg, rng.choice(pos, keep, replace=False)]))


def class_balanced_sampler(
    labels: np.ndarray | torch.Tensor, num_samples: int | None = None, seed: int | None = None
) -> torch.utils.data.WeightedRandomSampler:
    """Sampler drawing every class equally often (weight 1 / class count per item)."""
    y = torch.as_tensor(np.asarray(labels)).long()
    counts = torch.bincount(y).double()
    weights = 1.0 / counts[y]
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    return torch.utils.data.WeightedRandomSampler(
        weights, num_samples or len(y), replacement=True, generator=gen
    )


def bundle_datalists(
    data: str | Path, task: str = "melanoma", val_fraction: float = 0.2, seed: int = 0
) -> dict[str, list[dict]]:
    """MONAI datalists ``{"training": [...], "validation": [...]}`` of ``{"image", "label"}`` items,
    split by :func:`split_indices` (groups + content hashes)."""
    table = load_table(data, task)
    hashes = [file_hash(p) for p in table.paths]
    tr, va = split_indices(table.labels, table.groups, hashes, val_fraction, seed)
    check_classes_present(table.labels, table.classes, "training", tr)
    check_classes_present(table.labels, table.classes, "validation", va)

    def items(idx: np.ndarray) -> list[dict]:
        return [{"image": str(table.paths[i]), "label": int(table.labels[i])} for i in idx]

    return {"training": items(tr), "validation": items(va), "classes": table.classes}
