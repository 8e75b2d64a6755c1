"""Real MR domains from installed packages, slab splits, 2-D slices and MONAI datalists.

Domains (each a single subject, so train/validation/test are disjoint slabs of slices of one
volume, never different subjects):

* ``mni_tissue``: nilearn's MNI152 2009a T1 (2 mm) with its grey/white-matter maps; classes
  0 background/CSF, 1 grey matter, 2 white matter (argmax of the three probability maps).
* ``mni_brainmask``: the same T1 on coronal slices with nilearn's brain mask (0 outside, 1 brain);
  a second task on the same anatomy, used by the pip-only demo.
* ``colin_subcortical``: Colin27 (``ch2.nii.gz``) with the AAL atlas from Debian ``mricron-data``;
  classes 0 background, 1 caudate, 2 putamen, 3 thalamus, 4 hippocampus (left + right merged).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from plugins.errors import UserInputError

MRICRON_DIR = Path("/usr/share/mricron/templates")
MRICRON_HINT = "apt-get install -y mricron-data"
# AAL label ids (aal.nii.txt of mricron-data) grouped into structures, left + right
AAL_GROUPS = {
    "caudate": (71, 72),
    "putamen": (73, 74),
    "thalamus": (77, 78),
    "hippocampus": (37, 38),
}
ROLES = ("train", "test", "train", "val", "train")  # slab pattern: 60 % train, 20 % val, 20 % test


@dataclass
class Domain:
    """One volume with labels: ``image``/``label`` (X, Y, Z), slices taken along ``axis``."""

    name: str
    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    classes: list[str]
    axis: int = 2
    crop: tuple[slice, slice] | None = None
    meta: dict = field(default_factory=dict)

    @property
    def spacing(self) -> np.ndarray:
        return np.sqrt((self.affine[:3, :3] ** 2).sum(0))


def load_volume(path: str | Path, expect_ndim: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Load a NIfTI volume with nibabel; one clear error for a missing, corrupt or wrong-shape file."""
    import nibabel as nib

    path = Path(path)
    if not path.exists():
        raise UserInputError(f"{path} does not exist: expected a NIfTI file (.nii or .nii.gz).")
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as err:  # nibabel raises several types for truncated/garbled files
        raise UserInputError(
            f"{path} is not a readable NIfTI file ({type(err).__name__}: {err})."
        ) from None
    while data.ndim > expect_ndim and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != expect_ndim:
        raise UserInputError(
            f"{path} has {data.ndim} dimensions {data.shape}: expected a {expect_ndim}-D volume."
        )
    check_finite_volume(data, path)
    return data, img.affine


def check_finite_volume(data: np.ndarray | torch.Tensor, path: str | Path) -> None:
    """One sentence naming ``path`` and the count when ``data`` holds NaN or infinite voxels."""
    finite = torch.isfinite(data) if isinstance(data, torch.Tensor) else np.isfinite(data)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise UserInputError(
            f"{path} contains {bad} NaN or infinite voxels; clean the volume first."
        )


def _normalise(x: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(x[x > 0] if (x > 0).any() else x, [0.5, 99.5])
    return np.clip((x - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)


@functools.lru_cache(maxsize=1)
def _mni() -> tuple:
    from nilearn import datasets

    t1 = datasets.load_mni152_template(resolution=2)
    gm = np.asarray(datasets.load_mni152_gm_template(resolution=2).dataobj, dtype=np.float32)
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=2).dataobj, dtype=np.float32)
    mask = np.asarray(datasets.load_mni152_brain_mask(resolution=2).dataobj) > 0
    return t1, gm, wm, mask


def mni_tissue() -> Domain:
    t1, gm, wm, _ = _mni()
    rest = np.clip(1 - gm - wm, 0, 1)
    label = np.argmax(np.stack([rest, gm, wm]), 0).astype(np.int64)
    image = _normalise(np.asarray(t1.dataobj, dtype=np.float32))
    return Domain(
        "mni_tissue", image, label, t1.affine, ["background/CSF", "grey matter", "white matter"]
    )


def mni_brainmask() -> Domain:
    t1, _, _, mask = _mni()
    image = _normalise(np.asarray(t1.dataobj, dtype=np.float32))
    return Domain(
        "mni_brainmask", image, mask.astype(np.int64), t1.affine, ["outside", "brain"], axis=1
    )


def colin_available() -> bool:
    return (MRICRON_DIR / "ch2.nii.gz").exists() and (MRICRON_DIR / "aal.nii.gz").exists()


def colin_subcortical(crop: int = 96) -> Domain:
    """Colin27 + AAL subcortical structures, in-plane crop of ``crop`` mm around them (1 mm grid)."""
    if not colin_available():
        raise UserInputError(
            f"{MRICRON_DIR}/ch2.nii.gz and aal.nii.gz are missing: install them with `{MRICRON_HINT}`."
        )
    image, affine = load_volume(MRICRON_DIR / "ch2.nii.gz")
    aal, aal_affine = load_volume(MRICRON_DIR / "aal.nii.gz")
    if image.shape != aal.shape or not np.allclose(affine, aal_affine):
        raise UserInputError(
            "ch2.nii.gz and aal.nii.gz are not on the same grid: expected identical shape and affine."
        )
    label = np.zeros(aal.shape, np.int64)
    for k, ids in enumerate(AAL_GROUPS.values(), start=1):
        label[np.isin(aal.astype(np.int64), ids)] = k
    xs, ys, zs = np.nonzero(label)
    cx, cy = int(xs.mean()), int(ys.mean())
    h = crop // 2
    box = (slice(max(cx - h, 0), cx - h + crop), slice(max(cy - h, 0), cy - h + crop))
    z = slice(max(zs.min() - 2, 0), zs.max() + 3)
    image, label = image[box + (z,)], label[box + (z,)]
    shift = np.eye(4)
    shift[:3, 3] = [box[0].start, box[1].start, z.start]
    return Domain(
        "colin_subcortical", _normalise(image), label, affine @ shift, ["background", *AAL_GROUPS]
    )


def slab_roles(n: int, n_slabs: int = 10, roles: Sequence[str] = ROLES) -> np.ndarray:
    """Role of each of ``n`` slices: contiguous slabs cycling through ``roles``."""
    slab = np.minimum(np.arange(n) * n_slabs // max(n, 1), n_slabs - 1)
    return np.asarray([roles[s % len(roles)] for s in slab]), slab


def domain_slices(dom: Domain, size: int = 64) -> dict[str, torch.Tensor | np.ndarray]:
    """2-D slices of the labelled part of ``dom`` resized to (size, size).

    Returns ``image`` (N, 1, size, size) float, ``label`` (N, 1, size, size) long, ``role`` (N,)
    train/val/test, ``slab`` (N,) slab ids, ``spacing`` (3,) mm of the resized slices (in-plane,
    in-plane, through-plane).
    """
    img = np.moveaxis(dom.image, dom.axis, 0)
    lab = np.moveaxis(dom.label, dom.axis, 0)
    keep = np.nonzero((lab > 0).reshape(len(lab), -1).any(1))[0]
    img, lab = img[keep.min() : keep.max() + 1], lab[keep.min() : keep.max() + 1]
    h, w = img.shape[1:]
    side = max(h, w)
    pad = (
        (0, 0),
        ((side - h) // 2, side - h - (side - h) // 2),
        ((side - w) // 2, side - w - (side - w) // 2),
    )
    img, lab = np.pad(img, pad), np.pad(lab, pad)
    x = F.interpolate(
        torch.from_numpy(img)[:, None].float(), size=(size, size), mode="bilinear", antialias=True
    )
    y = F.interpolate(
        torch.from_numpy(lab)[:, None].float(), size=(size, size), mode="nearest"
    ).long()
    role, slab = slab_roles(len(x))
    inplane = np.delete(dom.spacing, dom.axis) * side / size
    return {
        "image": x,
        "label": y,
        "role": role,
        "slab": slab,
        "spacing": np.array([*inplane, dom.spacing[dom.axis]]),
    }


def write_datalist(
    out_dir: str | Path, domains: Sequence[Domain], n_slabs: int = 10, name: str = "datalist.json"
) -> Path:
    """Write every slab of every domain as NIfTI image/label files and a MONAI datalist.

    The datalist (``{"training": [...], "validation": [...], "test": [...]}``) holds items
    ``{"image": path, "label": path, "domain": k}`` with paths relative to ``out_dir``; slabs keep the
    volume's affine (shifted to their first slice), so labels map back to scanner space.
    """
    import nibabel as nib

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lists: dict[str, list] = {"training": [], "validation": [], "test": []}
    key = {"train": "training", "val": "validation", "test": "test"}
    for k, dom in enumerate(domains):
        n = dom.image.shape[dom.axis]
        role, slab = slab_roles(n, n_slabs)
        for s in range(n_slabs):
            idx = np.nonzero(slab == s)[0]
            if idx.size == 0:
                continue
            sl = [slice(None)] * 3
            sl[dom.axis] = slice(idx[0], idx[-1] + 1)
            shift = np.eye(4)
            shift[dom.axis, 3] = idx[0]
            aff = dom.affine @ shift
            stem = f"{dom.name}_slab{s:02d}"
            nib.save(
                nib.Nifti1Image(dom.image[tuple(sl)].astype(np.float32), aff),
                out / f"{stem}_image.nii.gz",
            )
            nib.save(
                nib.Nifti1Image(dom.label[tuple(sl)].astype(np.uint8), aff),
                out / f"{stem}_label.nii.gz",
            )
            item = {"image": f"{stem}_image.nii.gz", "label": f"{stem}_label.nii.gz", "domain": k}
            lists[key[role[idx[0]]]].append(item)
    path = out / name
    path.write_text(json.dumps(lists, indent=1))
    return path


DATALIST_FORMAT = (
    "a MONAI datalist JSON (.json) with 'training'/'validation'/'test' lists of "
    '{"image": "x.nii.gz", "label": "x_seg.nii.gz", "domain": k} items (NIfTI .nii/.nii.gz)'
)


def read_datalist(path: str | Path, what: str = "datalist") -> dict[str, list]:
    """The lists of a MONAI datalist JSON; one sentence naming ``what`` (the option or config key)
    and the file for a missing file, a binary or non-JSON file, or a JSON that is not a datalist."""
    p = Path(path)
    if not p.is_file():
        raise UserInputError(f"{what} {p} does not exist: expected {DATALIST_FORMAT}.")
    try:
        lists = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        kind = "a binary file" if isinstance(err, UnicodeDecodeError) else "not valid JSON"
        raise UserInputError(
            f"{what} {p} is {kind} ({p.suffix or 'no extension'}): expected {DATALIST_FORMAT}."
        ) from None
    if not isinstance(lists, dict) or not any(isinstance(v, list) for v in lists.values()):
        raise UserInputError(
            f"{what} {p} holds a JSON {type(lists).__name__} without item lists: "
            f"expected {DATALIST_FORMAT}."
        )
    return lists


def datalist_items(
    path: str | Path,
    key: str,
    keys: Sequence[str] = ("image", "label", "domain"),
    what: str = "datalist",
    required: bool = True,
    base_dir: str | Path | None = None,
) -> list[dict]:
    """Items of list ``key`` of datalist ``path`` with paths joined to ``base_dir`` (default: the
    JSON's folder), as ``monai.data.load_decathlon_datalist`` gives them.

    Each item must be a mapping with ``keys``; one sentence names the file, the list, the item and
    the missing key. ``required=False`` returns ``[]`` for an absent list.
    """
    p = Path(path)
    lists = read_datalist(p, what)
    if key not in lists:
        if not required:
            return []
        have = ", ".join(sorted(lists)) or "none"
        raise UserInputError(f"{what} {p} has no '{key}' list (it has: {have}).")
    if not isinstance(lists[key], list):
        raise UserInputError(f"{what} {p}: '{key}' is a {type(lists[key]).__name__}, not a list.")
    out = []
    for i, item in enumerate(lists[key]):
        if not isinstance(item, dict):
            raise UserInputError(f"{what} {p}: item {i} of '{key}' is not a mapping: {item!r}.")
        missing = [k for k in keys if k not in item]
        if missing:
            raise UserInputError(
                f"{what} {p}: item {i} of '{key}' has no '{missing[0]}' key "
                f"(expected {', '.join(keys)})."
            )
        item = dict(item)
        root = Path(base_dir) if base_dir is not None else p.parent
        for k in ("image", "label"):
            if isinstance(item.get(k), str):
                item[k] = str(root / item[k])
        out.append(item)
    return out


def validate_datalist(
    items: Sequence[dict], domain_classes: Sequence[int], base_dir: str | Path = "."
) -> list[dict]:
    """Check every datalist item before training: readable 3-D NIfTI, domain in range, labels in range.

    Raises :class:`UserInputError` naming the file or domain id at fault; returns ``items``.
    """
    k = len(domain_classes)
    for item in items:
        if "domain" not in item:
            raise UserInputError(
                f"datalist item {item} has no 'domain' key: expected an integer domain id."
            )
        try:
            d = int(item["domain"])
        except (TypeError, ValueError):
            raise UserInputError(
                f"domain {item['domain']!r} of {item.get('image')} is not an integer domain id."
            ) from None
        if not 0 <= d < k:
            raise UserInputError(
                f"domain id {d} of {item.get('image')} is out of range: expected [0, {k - 1}]."
            )
        image, _ = load_volume(Path(base_dir) / item["image"])
        if "label" in item:
            label, _ = load_volume(Path(base_dir) / item["label"])
            if label.shape != image.shape:
                raise UserInputError(
                    f"{item['label']} has shape {label.shape} but its image has {image.shape}."
                )
            bad = np.setdiff1d(np.unique(label), np.arange(domain_classes[d]))
            if bad.size:
                raise UserInputError(
                    f"{item['label']} holds label value {bad[0]:g} outside domain {d}'s classes [0, {domain_classes[d] - 1}]."
                )
    return list(items)
