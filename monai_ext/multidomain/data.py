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
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from plugins.errors import UserInputError

# Colin27 + AAL of the embedded demo: this folder, or the one environment variable MRICRON_ENV names
MRICRON_DIR = Path("/usr/share/mricron/templates")
MRICRON_ENV = "CONTRASTIVE_PLUGINS_MRICRON"
MRICRON_HINT = f"apt-get install -y mricron-data, or set {MRICRON_ENV} to a folder holding them"
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


def mricron_dir(template_dir: str | Path | None = None) -> Path:
    """Folder of ``ch2.nii.gz``/``aal.nii.gz``: the argument, else ``$CONTRASTIVE_PLUGINS_MRICRON``,
    else Debian's ``mricron-data`` folder."""
    return Path(template_dir or os.environ.get(MRICRON_ENV) or MRICRON_DIR)


def colin_available(template_dir: str | Path | None = None) -> bool:
    root = mricron_dir(template_dir)
    return (root / "ch2.nii.gz").exists() and (root / "aal.nii.gz").exists()


def colin_subcortical(crop: int = 96, template_dir: str | Path | None = None) -> Domain:
    """Colin27 + AAL subcortical structures, in-plane crop of ``crop`` mm around them (1 mm grid).

    ``template_dir``: see :func:`mricron_dir`."""
    root = mricron_dir(template_dir)
    if not colin_available(root):
        raise UserInputError(f"{root}/ch2.nii.gz and aal.nii.gz are missing: {MRICRON_HINT}.")
    image, affine = load_volume(root / "ch2.nii.gz")
    aal, aal_affine = load_volume(root / "aal.nii.gz")
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
    out_dir: str | Path,
    domains: Sequence[Domain],
    n_slabs: int = 10,
    name: str = "datalist.json",
    spacing: float = 2.0,
    roi: Sequence[int] = (64, 64),
) -> Path:
    """Write every slab of every domain as NIfTI image/label files and a MONAI datalist.

    The datalist (``{"domains": [...], "training": [...], "validation": [...], "test": [...]}``)
    holds items ``{"image": path, "label": path, "domain": k}`` with paths relative to ``out_dir``;
    slabs keep the volume's affine (shifted to their first slice), so labels map back to scanner
    space. ``domains`` is the bundle's domain table (``monai_ext.multidomain.domains``): each
    domain's name and class names, the isotropic ``spacing`` (mm), the 2-D ``roi`` and the
    ``slice_axis`` of its slices once reoriented to RAS (coronal for ``mni_brainmask``).
    """
    import nibabel as nib

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lists: dict[str, list] = {
        "domains": [
            {
                "name": d.name,
                "labels": list(d.classes),
                "spacing": [spacing] * 3,
                "roi": list(roi),
                "slice_axis": ras_axis(d.affine, d.axis),  # the in-memory domain's slices
            }
            for d in domains
        ],
        "training": [],
        "validation": [],
        "test": [],
    }
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
    items: Sequence[dict],
    domain_classes: Sequence[int],
    base_dir: str | Path = ".",
    names: Sequence[str] | None = None,
    value_maps: Sequence[dict[int, int]] | None = None,
    on_image: Callable[[Path, np.ndarray, np.ndarray], None] | None = None,
) -> list[dict]:
    """Check every datalist item before training: readable 3-D NIfTI, domain in range, labels in range.

    ``names`` (domain names) make the messages name the domain; ``value_maps`` (per domain, raw
    mask value -> class, see ``DomainSpec.label_values``) are applied before the range check.
    ``on_image(path, image, affine)`` sees every image once it is read (so that statistics need
    no second read). Raises :class:`UserInputError` naming the file or domain id at fault; returns
    ``items``.
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
        image, affine = load_volume(Path(base_dir) / item["image"])
        if on_image is not None:
            on_image(Path(base_dir) / item["image"], image, affine)
        if "label" in item:
            label, _ = load_volume(Path(base_dir) / item["label"])
            if label.shape != image.shape:
                raise UserInputError(
                    f"{item['label']} has shape {label.shape} but its image has {image.shape}."
                )
            values = np.unique(label)
            if value_maps is not None and value_maps[d]:
                values = np.unique([value_maps[d].get(int(v), v) for v in values])
            bad = np.setdiff1d(values, np.arange(domain_classes[d]))
            if bad.size:
                dom = f"domain {d} ('{names[d]}')" if names is not None else f"domain {d}"
                raise UserInputError(
                    f"{item['label']} holds label value {bad[0]:g} outside {dom}'s classes "
                    f"[0, {domain_classes[d] - 1}]."
                )
    return list(items)


# -- a user datalist as padded 2-D slices (``run mr-multidomain --data``) ------------------------
# datalist list -> slice role of the in-memory path (the demo's slab roles)
DATALIST_ROLES = {"training": "train", "validation": "val", "test": "test"}


@dataclass
class Case:
    """One scored volume: where its slices sit in its domain's stacked, padded arrays.

    ``index`` (N,) rows of the domain's ``image``/``label``; ``box`` (top, left, h, w) the slice
    window inside the padded canvas; ``truth`` (N0, 1, H0, W0) the label on the volume's own grid,
    reoriented to RAS (the domain's slices moved first); ``spacing`` (3,) mm of that grid (in-plane,
    in-plane, slice).
    """

    name: str
    role: str
    index: np.ndarray
    box: tuple[int, int, int, int]
    truth: torch.Tensor
    spacing: np.ndarray


def _scale_percentiles(x: np.ndarray) -> np.ndarray:
    """0.5th..99.5th percentile -> [0, 1], clipped (the bundle's ScaleIntensityRangePercentilesd)."""
    lo, hi = np.percentile(x, [0.5, 99.5])
    return np.clip((x - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)


def _resize3d(vol: torch.Tensor, shape: Sequence[int], mode: str) -> torch.Tensor:
    """(*S) -> ``shape`` with ``F.interpolate`` (``trilinear`` or ``nearest-exact``)."""
    if tuple(vol.shape) == tuple(shape):
        return vol
    extra = {"align_corners": False} if mode == "trilinear" else {}
    out = F.interpolate(vol[None, None].float(), size=tuple(shape), mode=mode, **extra)[0, 0]
    return out if mode == "trilinear" else out.round().to(vol.dtype)


def resample_to(
    vol: np.ndarray, spacing: Sequence[float], target: Sequence[float], mode: str
) -> np.ndarray:
    """``vol`` (X, Y, Z) from ``spacing`` to ``target`` mm, every axis by its own physical size, so
    the anatomy keeps its aspect ratio; unchanged when the grid size would not change."""
    shape = np.maximum(np.round(np.asarray(vol.shape) * np.asarray(spacing) / target), 1)
    return _resize3d(torch.from_numpy(vol), shape.astype(int).tolist(), mode).numpy()


def to_ras(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``data`` (X, Y, Z) reoriented to RAS, with its new affine: the bundle's
    ``Orientationd(axcodes="RAS")`` (axes permuted and flipped, never resampled)."""
    from nibabel.orientations import (
        apply_orientation,
        axcodes2ornt,
        inv_ornt_aff,
        io_orientation,
        ornt_transform,
    )

    ornt = ornt_transform(io_orientation(affine), axcodes2ornt("RAS"))
    out = np.ascontiguousarray(apply_orientation(data, ornt))
    return out, np.asarray(affine) @ inv_ornt_aff(ornt, data.shape)


def ras_axis(affine: np.ndarray, axis: int) -> int:
    """The axis of the RAS-reoriented volume that voxel axis ``axis`` of ``affine`` becomes."""
    from nibabel.orientations import io_orientation

    return int(io_orientation(np.asarray(affine))[axis, 0])


def slice_axis_last(slice_axis: int) -> list[int]:
    """Axis order that puts ``slice_axis`` last: (in-plane, in-plane, slice)."""
    return [a for a in range(3) if a != slice_axis] + [slice_axis]


def _legacy_table(lists: dict, path: str | Path, what: str) -> list:
    """Domain table of a datalist without a ``domains`` section (the older ``run --data`` form):
    integer domain ids 0..K-1, each domain's files kept at their own spacing; class names are
    filled in from the labels once loaded."""
    from monai_ext.multidomain.domains import DomainRow

    ids = set()
    for key in DATALIST_ROLES:
        for item in lists.get(key) or []:
            if not isinstance(item, dict) or "domain" not in item:
                continue  # datalist_items names malformed items
            value = item["domain"]
            if not isinstance(value, int) or isinstance(value, bool):
                raise UserInputError(
                    f"{what} {path}: domain {value!r} of {item.get('image')} is not an integer "
                    "id, and the datalist has no 'domains' section naming it."
                )
            ids.add(value)
    if sorted(ids) != list(range(len(ids))) or not ids:
        raise UserInputError(f"{what} {path}: domain ids must be 0..K-1, got {sorted(ids)}.")
    return [DomainRow(f"domain{k}", ("class0", "class1"), (1.0, 1.0, 1.0), (16, 16)) for k in ids]


def datalist_domains(path: str | Path, what: str = "--data") -> tuple[list[dict], bool]:
    """Every volume of a MONAI datalist as 2-D slices, one dict per domain.

    Volumes are reoriented to RAS (as the bundle does) and sliced across each domain's
    ``slice_axis`` (default 2).

    The ``domains`` section (``monai_ext.multidomain.domains``) gives each domain's name, class
    names, spacing (volumes are resampled to it, each axis by its own physical size: never
    squashed) and ROI. All slices are zero-padded, centred, to one canvas (the largest ROI, or the
    largest slice when one is larger; each side rounded up to a multiple of 16), never cropped or
    resized to a square; :func:`crop_back` undoes it. A datalist without ``domains`` (the older
    form: integer ids, labels' maxima as class counts) keeps every file at its own spacing.

    Returns:
        per domain ``image`` (N, 1, H, W) float in [0, 1], ``label`` (N, 1, H, W) long, ``role``
        (N,) train/val/test, ``slab`` (N,) case id, ``spacing``, ``name``, ``classes``, ``cases``
        (:class:`Case` list) and ``canvas`` (H, W); and whether the datalist has a
        ``validation`` list.
    """
    from monai_ext.multidomain.domains import (
        check_items,
        common_roi,
        domain_items,
        read_domains,
    )

    lists = read_datalist(path, what)
    legacy = "domains" not in lists
    table = _legacy_table(lists, path, what) if legacy else read_domains(path, what)
    items = []
    for key, role in DATALIST_ROLES.items():
        if key == "validation" and key not in lists:
            continue
        for item in domain_items(path, key, table, what=what):
            items.append({**item, "role": role})
    if not legacy:
        check_items(items, table)  # readable, finite, 3-D, labels within the domain's classes
    vols = []
    for item in items:
        image, affine = load_volume(item["image"])
        label, _ = load_volume(item["label"])
        if label.shape != image.shape:
            raise UserInputError(
                f"{item['label']} has shape {label.shape} but its image has {image.shape}."
            )
        row = table[item["domain"]]
        image, _ = to_ras(image, affine)  # as the bundle's Orientationd(axcodes="RAS")
        label, affine = to_ras(label, affine)
        spacing = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0))
        truth = label.astype(np.int64)
        for raw, cls in row.value_map().items():  # merged raw values -> the domain's classes
            truth[label == raw] = cls
        if not legacy:  # the domain's declared grid; the truth stays on the file's own grid
            image = resample_to(image, spacing, row.spacing, "trilinear")
            label = resample_to(truth, spacing, row.spacing, "nearest-exact")
        else:
            label = truth
        # the slice axis last: (in-plane, in-plane, slice), as every array below expects
        order = slice_axis_last(row.slice_axis)
        image, label, truth = (np.transpose(x, order) for x in (image, label, truth))
        vols.append((item, _scale_percentiles(image), label, truth, spacing[order]))
    sides = [v[1].shape[:2] for v in vols] + ([common_roi(table)] if not legacy else [])
    canvas = [int(-(-max(s[i] for s in sides) // 16) * 16) for i in (0, 1)]
    out = []
    for k, row in enumerate(table):
        mine = [v for v in vols if v[0]["domain"] == k]
        roles = {v[0]["role"] for v in mine}
        if "train" not in roles or "test" not in roles:
            raise UserInputError(
                f"{what} {path}: domain '{row.name}' needs items in both 'training' and 'test'."
            )
        images, labels, role, slab, cases, start = [], [], [], [], [], 0
        for c, (item, image, label, truth, spacing) in enumerate(mine):
            h, w, n = image.shape
            top, left = (canvas[0] - h) // 2, (canvas[1] - w) // 2
            pad = ((0, 0), (top, canvas[0] - h - top), (left, canvas[1] - w - left))
            images.append(np.pad(np.moveaxis(image, 2, 0), pad))
            labels.append(np.pad(np.moveaxis(label, 2, 0), pad))
            role += [item["role"]] * n
            slab += [c] * n
            cases.append(
                Case(
                    Path(item["image"]).name.removesuffix(".gz").removesuffix(".nii"),
                    item["role"],
                    np.arange(start, start + n),
                    (top, left, h, w),
                    torch.from_numpy(np.moveaxis(truth, 2, 0)[:, None].copy()),
                    spacing,
                )
            )
            start += n
        label = torch.from_numpy(np.concatenate(labels)[:, None]).long()
        classes = (
            list(row.labels)
            if not legacy
            else [f"class{c}" for c in range(int(max(int(v[3].max()) for v in mine)) + 1)]
        )
        out.append(
            {
                "image": torch.from_numpy(np.concatenate(images)[:, None]).float(),
                "label": label,
                "role": np.asarray(role),
                "slab": np.asarray(slab),
                "spacing": np.asarray(row.spacing)[slice_axis_last(row.slice_axis)]
                if not legacy
                else mine[0][4],
                "name": row.name,
                "classes": classes,
                "cases": cases,
                "canvas": tuple(canvas),
            }
        )
    return out, bool(lists.get("validation"))


def domain_cases(d: dict) -> list[Case]:
    """The scored volumes of a domain dict: its datalist cases, or (embedded demo) one per slab of
    already resized, unpadded slices."""
    if "cases" in d:
        return d["cases"]
    out = []
    h, w = d["label"].shape[-2:]
    for s in np.unique(d["slab"]):
        idx = np.nonzero(d["slab"] == s)[0]
        name = f"{d['name']}_slab{int(s):02d}"
        out.append(
            Case(name, str(d["role"][idx[0]]), idx, (0, 0, h, w), d["label"][idx], d["spacing"])
        )
    return out


def crop_back(pred: torch.Tensor, case: Case) -> torch.Tensor:
    """A case's predicted slices (N, 1, H, W) on the canvas -> (N0, 1, H0, W0) on its file's grid:
    the padding cut off, then the declared-spacing resampling undone (nearest)."""
    top, left, h, w = case.box
    p = pred[:, 0, top : top + h, left : left + w]
    return _resize3d(p, case.truth.shape[:1] + case.truth.shape[2:], "nearest-exact")[:, None]
