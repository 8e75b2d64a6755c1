"""Data for SuperCon: ISIC-style CSV + image folder, class-per-folder images, the shared ISIC copy,
leakage-free splits and a class-balanced sampler.

Splits (issues 6 and 21): the SuperCon reference's test list shares 80% of its images with its
training list. Here a patient (``patient_id`` when the metadata has it) and an exact-duplicate image
(same bytes, found by content hash) always land on one side only:

* :func:`find_duplicates` runs **before** splitting. Identical files within one patient stay
  together (the patient is one group); identical files across patients are reported and, by
  default, the extra copies are dropped (the copy of the first patient in table order stays).
  Patients are never merged through a shared file, so groups are never chained (merging them did
  chain most lesions of a real table into one group, and an 80/20 split came out about 40/60).
* scikit-learn's ``StratifiedGroupKFold`` then splits the groups by class, and
  :func:`split_summary` / :func:`check_split` report the realised fractions, the class counts per
  split and the largest group, and refuse a split that misses a class or misses its fraction.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
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
    "split_target",
    "DuplicateReport",
    "find_duplicates",
    "resolve_positive",
    "split_summary",
    "check_split",
    "summary_lines",
    "check_classes_present",
    "subsample_class",
    "class_balanced_sampler",
    "deduplicate",
    "bundle_datalists",
    "test_datalist",
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

    def subset(self, index: np.ndarray) -> ImageTable:
        """The rows ``index`` (same classes)."""
        index = np.asarray(index, dtype=np.int64)
        groups = None if self.groups is None else [self.groups[i] for i in index]
        return ImageTable([self.paths[i] for i in index], self.labels[index], self.classes, groups)

    def group_names(self) -> list[str]:
        """Each row's group: its patient, else its file name."""
        return list(self.groups) if self.groups is not None else [str(p) for p in self.paths]


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


@dataclass
class DuplicateReport:
    """Byte-identical files of a table (:func:`find_duplicates`).

    Attributes:
        within_sets, within_files: sets of identical files that all belong to one group (patient),
            and the files in them; they stay together because the group does.
        cross_sets, cross_files: sets whose copies belong to different groups, and their files.
        dropped: indices of the extra copies dropped (cross-group sets, every copy outside the
            group of the set's first file); empty with ``action="stop"``.
        conflicting_sets: duplicate sets whose copies carry different labels.
        examples: up to 3 cross-group sets, as lists of file paths.
    """

    within_sets: int = 0
    within_files: int = 0
    cross_sets: int = 0
    cross_files: int = 0
    dropped: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    conflicting_sets: int = 0
    examples: list[list[str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        """The counts for ``metrics.json`` (``dropped`` as a count)."""
        return {
            "within_patient_sets": self.within_sets,
            "within_patient_files": self.within_files,
            "cross_patient_sets": self.cross_sets,
            "cross_patient_files": self.cross_files,
            "dropped_copies": len(self.dropped),
            "conflicting_label_sets": self.conflicting_sets,
        }

    def message(self) -> str:
        """One line for the run's output."""
        text = (
            f"exact-duplicate files: {self.within_sets} set(s) within one patient "
            f"({self.within_files} files, kept together), {self.cross_sets} set(s) across "
            f"patients ({self.cross_files} files"
        )
        if len(self.dropped):
            text += f", {len(self.dropped)} extra copies dropped"
        text += ")"
        if self.conflicting_sets:
            text += f"; {self.conflicting_sets} set(s) carry different labels"
        return text


def _codes(values: Sequence[str] | np.ndarray) -> np.ndarray:
    return np.unique(np.asarray(values, dtype=object).astype(str), return_inverse=True)[1]


def find_duplicates(
    hashes: Sequence[str],
    groups: Sequence[str] | None,
    labels: np.ndarray,
    paths: Sequence[str | Path] | None = None,
    action: str = "drop",
) -> DuplicateReport:
    """Exact duplicates (same content hash) before any split.

    Within one group (patient) identical files are only counted: the group keeps them on one side
    of every split. Across groups the copies outside the group of the set's first file (in table
    order) are listed in ``dropped`` when ``action="drop"``; with ``action="stop"`` any
    cross-group set is one :class:`UserInputError` sentence; ``"report"`` only counts. No group is ever merged with another
    through a shared file. Without ``groups`` every file is its own group.
    """
    if action not in ("drop", "stop", "report"):
        raise UserInputError(f"duplicates must be 'drop' or 'stop', got {action!r}.")
    n = len(hashes)
    h = _codes(hashes)
    g = _codes(groups) if groups is not None else np.arange(n)
    size = np.bincount(h, minlength=h.max() + 1 if n else 0)
    pairs = np.unique(np.stack([h, g], 1), axis=0)
    groups_per_set = np.bincount(pairs[:, 0], minlength=len(size))
    label_pairs = np.unique(np.stack([h, np.asarray(labels)], 1), axis=0)
    labels_per_set = np.bincount(label_pairs[:, 0], minlength=len(size))
    dup = size > 1
    cross = groups_per_set > 1
    within = dup & ~cross
    first = np.full(len(size), n)
    np.minimum.at(first, h, np.arange(n))
    outside = cross[h] & (g != g[first][h])
    report = DuplicateReport(
        within_sets=int(within.sum()),
        within_files=int(size[within].sum()),
        cross_sets=int(cross.sum()),
        cross_files=int(size[cross].sum()),
        conflicting_sets=int((dup & (labels_per_set > 1)).sum()),
    )
    if paths is not None:
        for k in np.flatnonzero(cross)[:3]:
            report.examples.append([str(paths[i]) for i in np.flatnonzero(h == k)])
    if report.cross_sets and action == "stop":
        example = " = ".join(report.examples[0]) if report.examples else "e.g. one set"
        raise UserInputError(
            f"{report.cross_sets} set(s) of byte-identical files belong to different patients "
            f"({report.cross_files} files, e.g. {example}); remove the extra copies or pass "
            "--set duplicates=drop to drop them."
        )
    if action == "drop":
        report.dropped = np.flatnonzero(outside)
    return report


def split_target(fraction: float) -> float:
    """The share :func:`split_indices` aims at for ``fraction``: one of ``round(1 / fraction)``
    folds (0.2 -> 0.2, 0.15 -> 1/7)."""
    return 1 / max(2, round(1 / fraction))


def split_indices(
    labels: np.ndarray,
    groups: list[str] | None = None,
    hashes: list[str] | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, group-disjoint train/test indices.

    The groups are the patients (``groups``), else the content hashes (identical files form one
    group), else single items. Files identical across patients must have been resolved first
    (:func:`find_duplicates`): groups are never merged through them, since that chains patients
    into one large group. ``StratifiedGroupKFold`` keeps class ratios; the held-out share is
    :func:`split_target` of ``test_fraction``.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    labels = np.asarray(labels)
    if not 0 < test_fraction < 1:
        raise UserInputError(f"test_fraction must be in (0, 1), got {test_fraction}.")
    if groups is not None and hashes is not None:
        cross = find_duplicates(hashes, groups, labels, action="report").cross_sets
        if cross:
            raise UserInputError(
                f"{cross} set(s) of byte-identical files belong to different patients; drop the "
                "extra copies first (find_duplicates), patients are not merged through them."
            )
    if groups is not None:
        merged = _codes(groups)
    elif hashes is not None:
        merged = _codes(hashes)
    else:
        merged = np.arange(len(labels))
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


def resolve_positive(
    value: str | int | None, classes: Sequence[str], source: str, flag: str = "--set positive="
) -> int:
    """The positive class's index: ``value`` (a class name, case-insensitive, or an index), else
    the class called melanoma; otherwise one sentence asking for ``flag`` (``--set positive=`` on
    the command line, ``--positive `` in the bundle). There is no guess from class frequencies."""
    names = [str(c) for c in classes]
    if value is None:
        hits = [k for k, c in enumerate(names) if c.lower() == "melanoma"]
        if hits:
            return hits[0]
        raise UserInputError(
            f"{source} has the classes {', '.join(names)} and none is called melanoma; say which "
            f"one is the positive class with {flag}NAME (or its index)."
        )
    text = str(value).strip()
    if text in names:
        return names.index(text)
    lower = [c.lower() for c in names]
    if text.lower() in lower:
        return lower.index(text.lower())
    if text.lstrip("-").isdigit() and 0 <= int(text) < len(names):
        return int(text)
    raise UserInputError(
        f"{flag}{text}: expected one of the classes of {source} "
        f"({', '.join(names)}) or an index from 0 to {len(names) - 1}."
    )


def split_summary(
    labels: np.ndarray,
    classes: Sequence[str],
    splits: Mapping[str, np.ndarray],
    groups: Sequence[str] | None = None,
    targets: Mapping[str, float] | None = None,
) -> dict[str, object]:
    """The realised splits: per split its images, share of all split images, target share
    (``targets``), class counts and groups; and the largest group (images, share, split)."""
    labels = np.asarray(labels)
    total = sum(len(ix) for ix in splits.values())
    g = _codes(groups) if groups is not None else None
    out: dict[str, object] = {}
    largest = {"images": 0, "share": 0.0, "split": None}
    for name, ix in splits.items():
        ix = np.asarray(ix, dtype=np.int64)
        counts = np.bincount(labels[ix], minlength=len(classes))
        entry: dict[str, object] = {
            "images": int(len(ix)),
            "fraction": float(len(ix) / total) if total else 0.0,
            "class_counts": {str(c): int(v) for c, v in zip(classes, counts)},
            "groups": int(len(np.unique(g[ix]))) if g is not None else int(len(ix)),
        }
        if targets and name in targets:
            entry["target_fraction"] = float(targets[name])
        out[name] = entry
        if g is not None and len(ix):
            sizes = np.bincount(g[ix])
            if sizes.max() > largest["images"]:
                largest = {"images": int(sizes.max()), "share": 0.0, "split": name}
        elif len(ix) and largest["images"] < 1:
            largest = {"images": 1, "share": 0.0, "split": name}
    largest["share"] = float(largest["images"] / total) if total else 0.0
    out["largest_group"] = largest
    return out


def summary_lines(summary: Mapping[str, object]) -> list[str]:
    """:func:`split_summary` as printable lines."""
    lines = []
    for name, e in summary.items():
        if name == "largest_group":
            continue
        target = f" (target {e['target_fraction']:.1%})" if "target_fraction" in e else ""
        counts = ", ".join(f"{c} {v}" for c, v in e["class_counts"].items())
        lines.append(
            f"{name}: {e['images']} images = {e['fraction']:.1%}{target}, "
            f"{e['groups']} groups; {counts}"
        )
    lg = summary["largest_group"]
    lines.append(f"largest group: {lg['images']} images ({lg['share']:.1%}), in {lg['split']}")
    return lines


def check_split(
    summary: Mapping[str, object], classes: Sequence[str], tolerance: float, source: str
) -> None:
    """One sentence when a split misses a class, or its realised share of the images is further
    from its target than ``tolerance`` (``--set split_tolerance``) plus the rounding a stratified
    split of N images cannot avoid (one image per class, K / N)."""
    total = sum(e["images"] for k, e in summary.items() if k != "largest_group")
    slack = len(classes) / max(1, total)
    splits = {k: e for k, e in summary.items() if k != "largest_group"}
    for name, e in splits.items():  # a missing class first: it explains a fraction that is off
        empty = [c for c, v in e["class_counts"].items() if v == 0]
        if empty:
            raise UserInputError(
                f"the {name} split of {source} has no image of class(es) {', '.join(empty)} "
                f"({e['images']} images); add images of that class or drop it."
            )
    for name, e in splits.items():
        gap = abs(e["fraction"] - e.get("target_fraction", e["fraction"]))
        if gap > tolerance + slack:
            lg = summary["largest_group"]
            raise UserInputError(
                f"the {name} split of {source} holds {e['fraction']:.1%} of the images instead "
                f"of {e['target_fraction']:.1%} (more than split_tolerance={tolerance:g} plus "
                f"{slack:.3f} of rounding off; the largest patient group has {lg['images']} "
                "images); check the patient column or raise --set split_tolerance."
            )


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


def deduplicate(
    table: ImageTable, action: str = "drop"
) -> tuple[ImageTable, list[str], DuplicateReport]:
    """Hash every file of ``table`` and apply :func:`find_duplicates`; returns the table without
    the dropped copies, its hashes and the report."""
    hashes = [file_hash(p) for p in table.paths]
    report = find_duplicates(hashes, table.groups, table.labels, table.paths, action)
    if not len(report.dropped):
        return table, hashes, report
    keep = np.setdiff1d(np.arange(len(table)), report.dropped)
    return table.subset(keep), [hashes[i] for i in keep], report


def bundle_datalists(
    data: str | Path, task: str = "melanoma", val_fraction: float = 0.2, seed: int = 0
) -> dict[str, list[dict]]:
    """MONAI datalists ``{"training": [...], "validation": [...]}`` of ``{"image", "label",
    "group"}`` items, split by :func:`split_indices` (patients; identical files across patients:
    extra copies dropped first, see :func:`deduplicate`); ``"classes"`` and ``"hashes"`` (content
    hashes of every kept file) come along."""
    table, hashes, _ = deduplicate(load_table(data, task))
    tr, va = split_indices(table.labels, table.groups, hashes, val_fraction, seed)
    check_classes_present(table.labels, table.classes, "training", tr)
    check_classes_present(table.labels, table.classes, "validation", va)
    groups = table.group_names()

    def items(idx: np.ndarray) -> list[dict]:
        return [
            {"image": str(table.paths[i]), "label": int(table.labels[i]), "group": groups[i]}
            for i in idx
        ]

    return {
        "training": items(tr),
        "validation": items(va),
        "classes": table.classes,
        "hashes": hashes,
    }


def test_datalist(
    data: str | Path, task: str = "melanoma", classes: Sequence[str] | None = None
) -> dict[str, object]:
    """A held-out test datalist: a MONAI datalist JSON (``{"test": [{"image", "label"}, ...]}``,
    paths relative to the file) or anything :func:`load_table` reads. Returns ``{"test": items,
    "classes": names, "hashes": content hashes}``; ``classes`` (the config's class names) checks
    the JSON's integer labels."""
    import json

    path = Path(data)
    if path.is_file() and path.suffix.lower() == ".json":
        try:
            raw = json.loads(path.read_text())
            items = raw.get("test") or raw.get("testing")
            if not isinstance(items, list) or not items:
                raise ValueError("no non-empty 'test' list")
            table = ImageTable(
                [(path.parent / str(i["image"])).resolve() for i in items],
                np.array([int(i["label"]) for i in items], dtype=np.int64),
                list(classes or []),
                [str(i.get("group", i["image"])) for i in items],
            )
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise UserInputError(
                f"test datalist {path} is not a MONAI datalist with a 'test' list of "
                f"{{image, label}} items ({error_reason(e)})."
            ) from None
        missing = [p for p in table.paths if not p.is_file()]
        if missing:
            raise UserInputError(f"image {missing[0]} listed in {path} does not exist.")
        if classes and not ((table.labels >= 0) & (table.labels < len(classes))).all():
            raise UserInputError(
                f"test datalist {path} has labels outside 0..{len(classes) - 1} "
                f"({', '.join(map(str, classes))})."
            )
    else:
        table = load_table(path, task)
    groups = table.group_names()
    return {
        "test": [
            {"image": str(p), "label": int(y), "group": g}
            for p, y, g in zip(table.paths, table.labels, groups)
        ],
        "classes": table.classes,
        "hashes": [file_hash(p) for p in table.paths],
    }
