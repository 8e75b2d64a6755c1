"""Real multi-subject MR domains for the multi-domain experiment: subjects, splits, 2-D slices.

Boutillon et al., MICCAI 2021 train one 2-D network on slices of several small MR data sets
(domains). Here the domains are the shared folders described in ``shared/data/README.md``:

* ``spine_vb3``: ``spine_mr/VB3`` (50 subjects, 3 T water-fat MR), vertebral body vs background;
* ``spine_vb2``: ``spine_mr/VB2`` (17 subjects, T2 TSE, another site), the same task;
* ``hippocampus``: ``hippocampus_mr`` (120 subjects, T1 MPRAGE crops), anterior and posterior
  hippocampus, a different anatomy with its own head.

Everything is split by *subject* (never by slice), with a fixed seed, before any slice is cut.
Slices are sagittal (spine: axis 2, per the data README; hippocampus: axis 0, the x axis of its
identity affine). Every slice is zero-padded, centred, to one common size shared by all domains;
nothing is squashed. The spine volumes are block-averaged uniformly by ``factor`` 2 on every axis
(1.5 mm -> 3 mm isotropic) so that the whole grid fits a CPU; a uniform zoom keeps every aspect
ratio. Labels are reduced with the same blocks (majority of the one-hot block average).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from plugins.errors import UserInputError

__all__ = [
    "DOMAINS",
    "DomainSpec",
    "budget_subjects",
    "common_size",
    "domain_slices",
    "list_subjects",
    "load_subject",
    "pad_slices",
    "split_subjects",
    "subject_index",
]


@dataclass(frozen=True)
class DomainSpec:
    """One real domain: where its files are and how it is sliced.

    Attributes:
        name: short domain name used in tables.
        folder: path inside the shared data folder.
        image_glob: glob (relative to ``folder``) of the images.
        label_of: regex replacement ``(pattern, repl)`` mapping an image path to its label path.
        classes: class names, background first.
        binarise: the mask holds instance ids 1..K of one structure: keep ``mask > 0``.
        slice_axis: the volume axis that indexes the 2-D slices (sagittal).
        factor: uniform block-average zoom applied to every axis before slicing (1: none).
        n_val, n_test: subjects held out for validation and test; the rest train.
    """

    name: str
    folder: str
    image_glob: str
    label_of: tuple[str, str]
    classes: tuple[str, ...]
    binarise: bool
    slice_axis: int
    factor: int
    n_val: int
    n_test: int


DOMAINS: tuple[DomainSpec, ...] = (
    DomainSpec(
        "spine_vb3",
        "spine_mr/VB3",
        "VB3_*_img.nii.gz",
        (r"_img\.nii\.gz$", "_seg.nii.gz"),
        ("background", "vertebral_body"),
        True,
        2,
        2,
        5,
        15,
    ),
    DomainSpec(
        "spine_vb2",
        "spine_mr/VB2",
        "VB2_*_img.nii.gz",
        (r"_img\.nii\.gz$", "_seg.nii.gz"),
        ("background", "vertebral_body"),
        True,
        2,
        2,
        2,
        6,
    ),
    DomainSpec(
        "hippocampus",
        "hippocampus_mr",
        "images/hippocampus_*.nii.gz",
        (r"/images/(hippocampus_\d+\.nii\.gz)$", r"/labels/\1"),
        ("background", "anterior", "posterior"),
        False,
        0,
        1,
        10,
        20,
    ),
)


def list_subjects(spec: DomainSpec, root: str | Path) -> list[tuple[str, Path, Path]]:
    """``(subject id, image path, label path)`` of every subject of ``spec``, sorted by id."""
    folder = Path(root) / spec.folder
    images = sorted(folder.glob(spec.image_glob))
    if not images:
        raise UserInputError(f"no images matching {spec.image_glob} in {folder}.")
    out = []
    for img in images:
        lab = Path(re.sub(spec.label_of[0], spec.label_of[1], str(img)))
        if not lab.exists():
            raise UserInputError(f"{img} has no label file {lab}.")
        out.append((img.name.split(".")[0].removesuffix("_img"), img, lab))
    return out


def split_subjects(
    subjects: list[str], n_val: int, n_test: int, seed: int = 0
) -> dict[str, list[str]]:
    """Disjoint ``train``/``val``/``test`` subject lists, a fixed permutation of ``seed``.

    The test subjects are the first ``n_test`` of the permutation, validation the next ``n_val``;
    each list is returned sorted.
    """
    ids = list(subjects)
    if len(set(ids)) != len(ids):
        dup = next(s for s in ids if ids.count(s) > 1)
        raise UserInputError(f"subject {dup} is listed twice: a subject may be in one split only.")
    if n_val < 0 or n_test < 1 or n_val + n_test >= len(ids):
        raise UserInputError(
            f"{len(ids)} subjects cannot give {n_test} test and {n_val} validation subjects "
            "and at least one training subject."
        )
    perm = np.random.default_rng(seed).permutation(len(ids))
    test, val, train = perm[:n_test], perm[n_test : n_test + n_val], perm[n_test + n_val :]
    return {
        role: sorted(ids[i] for i in idx)
        for role, idx in zip(("train", "val", "test"), (train, val, test), strict=True)
    }


def budget_subjects(train: list[str], budget: int, seed: int) -> list[str]:
    """The ``budget`` annotated training subjects of a seed (``budget`` 0: all of them).

    A seed's budgets are nested: the first ``budget`` of one permutation of ``train``.
    """
    if budget < 0:
        raise UserInputError(f"label budget must be >= 0 (0 = all subjects), got {budget}.")
    perm = np.random.default_rng(seed).permutation(len(train))
    k = len(train) if budget == 0 else min(budget, len(train))
    return sorted(train[i] for i in perm[:k])


def subject_index(d: dict, subjects: list[str], role: str = "train") -> np.ndarray:
    """Indices of the slices of ``d`` (a :func:`domain_slices` dict) that belong to ``subjects``."""
    return np.nonzero(np.isin(d["subject"], subjects) & (d["role"] == role))[0]


def _zoom(volume: torch.Tensor, factor: int, label_classes: int | None = None) -> torch.Tensor:
    """Uniform block average by ``factor`` on every axis (labels: majority vote over the block)."""
    if factor == 1:
        return volume
    if label_classes is None:
        return F.avg_pool3d(volume[None, None], factor, ceil_mode=True, count_include_pad=False)[
            0, 0
        ]
    onehot = F.one_hot(volume.long(), label_classes).permute(3, 0, 1, 2).float()
    pooled = F.avg_pool3d(onehot[None], factor, ceil_mode=True, count_include_pad=False)[0]
    return pooled.argmax(0)


def load_subject(spec: DomainSpec, image: Path, label: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Image (float in [0, 1]: 0.5th-99.5th percentile window) and label (int64) volumes, zoomed."""
    from monai_ext.multidomain.data import load_volume

    img, _ = load_volume(image)
    lab, _ = load_volume(label)
    if img.shape != lab.shape:
        raise UserInputError(f"{image} has shape {img.shape} but its label {lab.shape}.")
    lo, hi = np.percentile(img, [0.5, 99.5])
    x = torch.from_numpy(np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)).float()
    y = torch.from_numpy(lab).long()
    if spec.binarise:
        y = (y > 0).long()
    if int(y.max()) >= len(spec.classes) or int(y.min()) < 0:
        raise UserInputError(
            f"{label} holds label {int(y.max())}: domain {spec.name} has classes 0..{len(spec.classes) - 1}."
        )
    return _zoom(x, spec.factor), _zoom(y, spec.factor, len(spec.classes))


def slice_shape(spec: DomainSpec, shape: tuple[int, ...]) -> tuple[int, int]:
    """(H, W) of the slices of a volume of ``shape`` after the zoom."""
    zoomed = [-(-s // spec.factor) for s in shape]
    del zoomed[spec.slice_axis]
    return zoomed[0], zoomed[1]


def common_size(
    specs: tuple[DomainSpec, ...], root: str | Path, multiple: int = 16
) -> tuple[int, int]:
    """Smallest (H, W), multiples of ``multiple``, holding every slice of every domain (headers only)."""
    import nibabel as nib

    h = w = 0
    for spec in specs:
        for _, img, _ in list_subjects(spec, root):
            sh, sw = slice_shape(spec, nib.load(str(img)).shape[:3])
            h, w = max(h, sh), max(w, sw)
    return -(-h // multiple) * multiple, -(-w // multiple) * multiple


def pad_slices(
    volume: torch.Tensor, axis: int, size: tuple[int, int]
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Slices of ``volume`` along ``axis`` as (N, 1, H, W), zero-padded centred to ``size``.

    Returns the slices and the (top, left) offset of the volume's slice inside the padded one.
    """
    s = volume.movedim(axis, 0)
    h, w = s.shape[1:]
    if h > size[0] or w > size[1]:
        raise UserInputError(f"slices of {h}x{w} do not fit the common size {size[0]}x{size[1]}.")
    top, left = (size[0] - h) // 2, (size[1] - w) // 2
    padded = F.pad(s, (left, size[1] - w - left, top, size[0] - h - top))
    return padded[:, None], (top, left)


def domain_slices(
    spec: DomainSpec,
    root: str | Path,
    split: dict[str, list[str]],
    size: tuple[int, int],
    roles: tuple[str, ...] = ("train", "test"),
) -> dict:
    """All slices of the subjects of ``roles`` in one dict (the layout of ``run._fit_and_score``).

    Keys: ``image`` (N, 1, H, W) float, ``label`` (N, 1, H, W) int64, ``role`` (N,) str,
    ``subject`` (N,) subject ids, ``slab`` (N,) an integer per subject (3-D scoring unit),
    ``spacing`` (in-plane, in-plane, through-plane) mm after the zoom, ``name``, ``classes``.
    """
    import nibabel as nib

    by_id = {sid: (img, lab) for sid, img, lab in list_subjects(spec, root)}
    xs, ys, role_of, subj, slab = [], [], [], [], []
    spacing = None
    for role in roles:
        for sid in split[role]:
            img, lab = by_id[sid]
            x, y = load_subject(spec, img, lab)
            sx, _ = pad_slices(x, spec.slice_axis, size)
            sy, _ = pad_slices(y, spec.slice_axis, size)
            xs.append(sx)
            ys.append(sy)
            role_of += [role] * len(sx)
            subj += [sid] * len(sx)
            slab += [len(xs) - 1] * len(sx)  # one id per subject
            if spacing is None:
                zooms = np.asarray(nib.load(str(img)).header.get_zooms()[:3], float) * spec.factor
                spacing = [float(z) for i, z in enumerate(zooms) if i != spec.slice_axis]
                spacing.append(float(zooms[spec.slice_axis]))
    return {
        "image": torch.cat(xs),
        "label": torch.cat(ys),
        "role": np.asarray(role_of),
        "subject": np.asarray(subj),
        "slab": np.asarray(slab),
        "spacing": spacing,
        "name": spec.name,
        "classes": list(spec.classes),
    }
