"""The domain table: declared in the datalist, stored in the checkpoint, applied per item.

A datalist in MONAI's JSON convention (``training``/``validation``/``test`` lists of
``{"image", "label", "domain"}`` items) carries a ``domains`` section; it alone defines the domains
of the multi-domain network (Boutillon et al., MICCAI 2021: one DSBN slot and one head per domain)::

    {"domains": [
        {"name": "spine_vb3", "labels": ["background", "vertebral body"],
         "spacing": [1.5, 1.5, 1.5], "roi": [160, 64],
         "label_values": {"vertebral body": [1, 2, 3, 4, 5]}},
        {"name": "hippocampus", "labels": ["background", "anterior", "posterior"],
         "spacing": [1.0, 1.0, 1.0], "roi": [48, 64]}],
     "training": [{"image": "a.nii.gz", "label": "a_seg.nii.gz", "domain": "spine_vb3"}, ...]}

* ``labels``: class names, background first (their count is the domain's head width);
* ``spacing``: mm the domain's volumes are resampled to; ``roi``: the 2-D slice window (each side a
  multiple of 16, the U-Net's four poolings) for training crops and sliding-window inference;
* ``label_values`` (optional): raw mask values merged into a class, e.g. one id per vertebra;
* ``slice_axis`` (optional, default 2): the axis of the RAS-reoriented volume that indexes the 2-D
  slices: 0 (left-right: sagittal slices), 1 (anterior-posterior: coronal), 2 (inferior-superior:
  axial). The names hold only where the files' headers are right: the shared spine volumes are
  labelled RAS but hold their sagittal slices along axis 2. ``roi`` sizes the two other axes, in
  axis order.

An item's ``domain`` is a declared name (or its index). The checkpoint stores the table, the network
settings and per-domain training input statistics (:class:`ModelCard`), so that inference and
evaluation rebuild the network from the file alone and warn about inputs far from training.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    InvertibleTransform,
    MapTransform,
    RandSpatialCropd,
    Spacingd,
    SpatialPadd,
    SqueezeDimd,
)

from monai_ext.multidomain.data import datalist_items, load_volume, read_datalist
from monai_ext.multidomain.model import MultiDomainUNet
from plugins.checkpoint import load_checkpoint
from plugins.errors import UserInputError

__all__ = [
    "FAR",
    "FORMAT",
    "DomainRow",
    "DomainShiftWarning",
    "ModelCard",
    "PerDomaind",
    "DomainLabeld",
    "DomainInputCheckd",
    "read_domains",
    "check_splits",
    "domain_items",
    "check_items",
    "volume_stats",
    "training_stats",
    "domain_spacing",
    "domain_slice_crop",
    "common_roi",
]

FORMAT = "multidomain_mr_seg/domains/1"
# an input is "far" from its domain when a voxel spacing or its intensity range (99.5th minus
# 0.5th percentile) is more than this factor below the smallest or above the largest seen in training
FAR = 2.0
EXAMPLE = (
    '"domains": [{"name": "spine", "labels": ["background", "vertebral body"], '
    '"spacing": [1.5, 1.5, 1.5], "roi": [160, 64]}]'
)


class DomainShiftWarning(UserWarning):
    """An input lies far outside the spacing or intensity range its domain was trained on."""


@dataclass(frozen=True)
class DomainRow:
    """One row of the domain table (see the module docstring for the datalist keys)."""

    name: str
    labels: tuple[str, ...]
    spacing: tuple[float, float, float]
    roi: tuple[int, int]
    label_values: dict[str, tuple[int, ...]] = field(default_factory=dict)
    slice_axis: int = 2

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def value_map(self) -> dict[int, int]:
        """Raw mask value -> class index for the merged values of ``label_values``."""
        return {v: self.labels.index(n) for n, vals in self.label_values.items() for v in vals}

    def as_dict(self) -> dict[str, Any]:
        """Plain types only: the checkpoint is loaded with ``weights_only=True``."""
        return {
            "name": self.name,
            "labels": list(self.labels),
            "spacing": list(self.spacing),
            "roi": list(self.roi),
            "label_values": {k: list(v) for k, v in self.label_values.items()},
            "slice_axis": self.slice_axis,
        }

    def slice_window(self, depth: int = 1) -> list[int]:
        """The 3-D window of one ``roi`` slice: ``roi`` on the in-plane axes, ``depth`` on the
        slice axis (``-1``: the whole axis, as MONAI's spatial sizes)."""
        window = list(self.roi)
        window.insert(self.slice_axis, depth)
        return window


def _numbers(value: Any, n: int, kind: type, where: str, key: str) -> tuple:
    ok = isinstance(value, list | tuple) and len(value) == n
    ok = ok and all(isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in value)
    if not ok or (kind is int and any(int(v) != v for v in value)):
        word = "whole numbers" if kind is int else "numbers"
        raise UserInputError(
            f"{where}: '{key}' must be a list of {n} positive {word}, got {value!r}."
        )
    return tuple(kind(v) for v in value)


def parse_domain(entry: Any, index: int, where: str) -> DomainRow:
    """One ``domains`` entry -> :class:`DomainRow`; one sentence naming the domain and the key."""
    if (
        not isinstance(entry, Mapping)
        or not isinstance(entry.get("name"), str)
        or not entry["name"]
    ):
        raise UserInputError(f"{where}: domain {index} needs a 'name' (e.g. {EXAMPLE}).")
    name = entry["name"]
    here = f"{where}: domain '{name}'"
    labels = entry.get("labels")
    if not labels:
        raise UserInputError(
            f"{here} has no label names: give 'labels', the class names with background first, "
            'e.g. ["background", "vertebral body"].'
        )
    if (
        not isinstance(labels, list)
        or len(labels) < 2
        or not all(isinstance(x, str) for x in labels)
    ):
        raise UserInputError(
            f"{here}: 'labels' must list at least 2 class names (background first), got {labels!r}."
        )
    if len(set(labels)) != len(labels):
        raise UserInputError(f"{here}: 'labels' repeats a name: {labels!r}.")
    for key in ("spacing", "roi"):
        if key not in entry:
            raise UserInputError(f"{here} has no '{key}' (e.g. {EXAMPLE}).")
    spacing = _numbers(entry["spacing"], 3, float, here, "spacing")
    roi = _numbers(entry["roi"], 2, int, here, "roi")
    if any(r % 16 for r in roi):
        raise UserInputError(
            f"{here}: each side of 'roi' must be a multiple of 16 (the U-Net pools four times), "
            f"got {list(roi)}."
        )
    merged = entry.get("label_values") or {}
    if not isinstance(merged, Mapping):
        raise UserInputError(f"{here}: 'label_values' must map class names to lists of values.")
    values = {}
    for cls, vals in merged.items():
        if cls not in labels:
            raise UserInputError(
                f"{here}: 'label_values' names '{cls}', which is not in its labels {labels}."
            )
        if not isinstance(vals, list) or not all(isinstance(v, int) and v >= 0 for v in vals):
            raise UserInputError(
                f"{here}: 'label_values' of '{cls}' must be a list of whole numbers."
            )
        values[cls] = tuple(vals)
    axis = entry.get("slice_axis", 2)
    if axis not in (0, 1, 2) or isinstance(axis, bool):
        raise UserInputError(
            f"{here}: 'slice_axis' must be 0, 1 or 2 (the axis of the RAS-reoriented volume that "
            f"indexes the slices; 2, axial, by default), got {axis!r}."
        )
    return DomainRow(name, tuple(labels), spacing, roi, values, int(axis))  # type: ignore[arg-type]


def check_splits(lists: Mapping[str, Any], where: str) -> None:
    """No subject in two lists: the ``subject`` key of an item, else its image path."""
    seen: dict[str, str] = {}
    for key in ("training", "validation", "test"):
        for item in lists.get(key) or []:
            if not isinstance(item, Mapping) or "image" not in item:
                continue  # datalist_items names malformed items
            subject = str(item.get("subject", Path(str(item["image"])).as_posix()))
            if seen.get(subject, key) != key:
                raise UserInputError(
                    f"{where}: subject '{subject}' is in both '{seen[subject]}' and '{key}'; "
                    "each subject belongs to one split."
                )
            seen[subject] = key


def read_domains(datalist: str | Path, what: str = "datalist") -> list[DomainRow]:
    """The domain table of ``datalist``, after checking the table and the splits."""
    lists = read_datalist(datalist, what)
    where = f"{what} {datalist}"
    entries = lists.get("domains")
    if not isinstance(entries, list) or not entries:
        raise UserInputError(
            f"{where} has no 'domains' section: declare every domain with its name, label names, "
            f"spacing and roi, e.g. {EXAMPLE}."
        )
    table = [parse_domain(e, i, where) for i, e in enumerate(entries)]
    names = [d.name for d in table]
    if len(set(names)) != len(names):
        raise UserInputError(f"{where}: two domains share a name: {names}.")
    check_splits(lists, where)
    return table


def _index(value: Any, table: Sequence[DomainRow], where: str) -> int:
    names = [d.name for d in table]
    if isinstance(value, str) and value in names:
        return names.index(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(table):
        return value
    raise UserInputError(
        f"{where} names domain {value!r}, which the domain table does not declare "
        f"(it declares: {', '.join(names)})."
    )


def domain_items(
    datalist: str | Path,
    key: str,
    table: Sequence[DomainRow],
    keys: Sequence[str] = ("image", "label", "domain"),
    what: str = "datalist",
    base_dir: str | Path | None = None,
    table_from: str | None = None,
) -> list[dict]:
    """Items of list ``key`` with absolute paths and ``domain`` turned into the table's index.

    ``table_from`` names the checkpoint the table came from (inference, evaluation): a ``domains``
    section of the datalist must then equal it, else one sentence says where they differ.
    """
    lists = read_datalist(datalist, what)
    where = f"{what} {datalist}"
    check_splits(lists, where)
    if table_from is not None and lists.get("domains") is not None:
        _same_table(read_domains(datalist, what), table, where, f"checkpoint {table_from}")
    items = datalist_items(datalist, key, keys, what, base_dir=base_dir)
    for i, item in enumerate(items):
        item["domain"] = _index(item["domain"], table, f"{where}: item {i} of '{key}'")
    return items


def _same_table(
    mine: Sequence[DomainRow], theirs: Sequence[DomainRow], where: str, source: str
) -> None:
    for k in range(max(len(mine), len(theirs))):
        a = mine[k] if k < len(mine) else None
        b = theirs[k] if k < len(theirs) else None
        if a != b:
            show = lambda d: "nothing" if d is None else f"'{d.name}' {d.as_dict()}"  # noqa: E731
            raise UserInputError(
                f"{source} was trained on another domain table: its domain {k} is {show(b)}, "
                f"{where} declares {show(a)}."
            )


def check_items(
    items: Sequence[dict], table: Sequence[DomainRow], labels: bool = True
) -> list[dict]:
    """Every item readable, finite, 3-D; its label values (after ``label_values``) within its
    domain's classes. One sentence names the file and the domain."""
    from monai_ext.multidomain.data import validate_datalist

    if not labels:
        items = [{k: v for k, v in item.items() if k != "label"} for item in items]
    return validate_datalist(
        items,
        [d.num_classes for d in table],
        names=[d.name for d in table],
        value_maps=[d.value_map() for d in table],
        on_image=_remember_stats,
    )


# -- input statistics ------------------------------------------------------------------------------
def volume_stats(image: np.ndarray | torch.Tensor, affine: np.ndarray | torch.Tensor) -> dict:
    """Voxel spacing (mm, from the affine) and intensity range (99.5th - 0.5th percentile)."""
    a = np.asarray(affine, dtype=float)
    x = np.asarray(image, dtype=np.float32).ravel()
    lo, hi = np.percentile(x, [0.5, 99.5])
    return {"spacing": np.sqrt((a[:3, :3] ** 2).sum(0)).tolist(), "range": float(hi - lo)}


# volume_stats of the images check_items has read, so that training_stats does not read them again;
# keyed by the file's resolved path, size and modification time (a changed file is read anew)
_STATS: dict[tuple[str, int, int], dict] = {}


def _file_key(path: str | Path) -> tuple[str, int, int]:
    st = Path(path).stat()
    return str(Path(path).resolve()), st.st_size, st.st_mtime_ns


def _remember_stats(path: Path, image: np.ndarray, affine: np.ndarray) -> None:
    _STATS[_file_key(path)] = volume_stats(image, affine)


def training_stats(items: Sequence[dict], table: Sequence[DomainRow]) -> list[dict]:
    """Per domain: smallest/largest spacing per axis and intensity range over its training images
    (from :func:`check_items`'s read where it checked them, else read here)."""
    per: list[list[dict]] = [[] for _ in table]
    for item in items:
        stats = _STATS.get(_file_key(item["image"]))
        if stats is None:
            stats = volume_stats(*load_volume(item["image"]))
        per[int(item["domain"])].append(stats)
    out = []
    for rows in per:
        if not rows:
            out.append({"n": 0})
            continue
        sp = np.asarray([r["spacing"] for r in rows])
        rg = np.asarray([r["range"] for r in rows])
        out.append(
            {
                "n": len(rows),
                "spacing_min": sp.min(0).tolist(),
                "spacing_max": sp.max(0).tolist(),
                "range_min": float(rg.min()),
                "range_max": float(rg.max()),
            }
        )
    return out


def shift_message(
    stats: Mapping[str, Any], found: Mapping[str, Any], far: float = FAR
) -> str | None:
    """Why ``found`` (:func:`volume_stats`) lies far outside ``stats`` (:func:`training_stats`)."""
    if not stats.get("n"):
        return None
    sp = np.asarray(found["spacing"])
    lo, hi = np.asarray(stats["spacing_min"]), np.asarray(stats["spacing_max"])
    if np.any(sp < lo / far) or np.any(sp > hi * far):
        return (
            f"spacing {np.round(sp, 3).tolist()} mm is far outside the "
            f"{np.round(lo, 3).tolist()}..{np.round(hi, 3).tolist()} mm it was trained on"
        )
    r = found["range"]
    if r < stats["range_min"] / far or r > stats["range_max"] * far:
        return (
            f"intensity range {r:.4g} (99.5th - 0.5th percentile) is far outside the "
            f"{stats['range_min']:.4g}..{stats['range_max']:.4g} it was trained on"
        )
    return None


# -- the checkpoint --------------------------------------------------------------------------------
@dataclass
class ModelCard:
    """What the checkpoint stores beside the weights: the domain table, the network's constructor
    arguments and per-domain training input statistics. ``CheckpointSaver`` saves it as ``card``
    next to ``model`` (it has ``state_dict``/``load_state_dict``)."""

    domains: list[DomainRow]
    network: dict[str, Any]
    stats: list[dict] = field(default_factory=list)
    weights: dict[str, torch.Tensor] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "domains": [d.as_dict() for d in self.domains],
            "network": dict(self.network),
            "stats": list(self.stats),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.domains = [parse_domain(d, i, "checkpoint") for i, d in enumerate(state["domains"])]
        self.network, self.stats = dict(state["network"]), list(state.get("stats", []))

    @classmethod
    def from_file(cls, path: str | Path, what: str = "checkpoint") -> ModelCard:
        """The card and weights of a checkpoint written by ``train.yaml``; one sentence otherwise."""
        obj = load_checkpoint(path, what=what)
        card = obj.get("card")
        if not isinstance(card, Mapping) or card.get("format") != FORMAT or "model" not in obj:
            raise UserInputError(
                f"{what} {path} holds no domain table (written by another program or an older "
                "version of this bundle); retrain it with configs/train.yaml."
            )
        out = cls([], {})
        out.load_state_dict(card)
        out.weights = obj["model"]
        return out

    def build_network(self, default_domain: int = 0) -> MultiDomainUNet:
        """The network of the card with its weights loaded."""
        net = MultiDomainUNet(**{**self.network, "default_domain": default_domain})
        if self.weights is not None:
            net.load_state_dict(self.weights)
        return net


# -- per-domain transforms -------------------------------------------------------------------------
class PerDomaind(InvertibleTransform):
    """Apply ``transforms[item[domain_key]]`` to each item; invertible when those transforms are.

    ``Invertd`` hands ``inverse`` the image alone (no domain key), so the inverse finds its domain
    from the id of the last operation recorded on the tensor by the forward call.
    """

    def __init__(self, transforms: Sequence[Callable], domain_key: str = "domain"):
        self.transforms = list(transforms)
        self.domain_key = domain_key
        self._owner: dict[int, int] = {}

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        k = int(torch.as_tensor(d[self.domain_key]))
        out = dict(self.transforms[k](d))
        for value in out.values():
            if isinstance(value, MetaTensor) and value.applied_operations:
                self._owner[value.applied_operations[-1]["id"]] = k
        return out

    def inverse(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for value in d.values():
            if isinstance(value, MetaTensor) and value.applied_operations:
                k = self._owner.get(value.applied_operations[-1]["id"])
                if k is not None:
                    return dict(self.transforms[k].inverse(d))
        return d


def domain_spacing(
    table: Sequence[DomainRow], keys: Sequence[str] | str, mode: Sequence[str] | str
) -> PerDomaind:
    """``Spacingd`` to each domain's declared spacing (invertible)."""
    return PerDomaind([Spacingd(keys, pixdim=list(d.spacing), mode=mode) for d in table])


def common_roi(table: Sequence[DomainRow]) -> list[int]:
    """The smallest window holding every domain's ROI: mixed-domain batches are padded to it."""
    return np.max([d.roi for d in table], 0).tolist()


def domain_slice_crop(table: Sequence[DomainRow], keys: Sequence[str]) -> PerDomaind:
    """A random 2-D slice window of each domain's own ROI, across its ``slice_axis``, zero-padded
    (never resized) to :func:`common_roi` so that a batch of several domains stacks."""
    common = common_roi(table)
    return PerDomaind(
        [
            Compose(
                [
                    SpatialPadd(keys, d.slice_window(-1)),
                    RandSpatialCropd(keys, d.slice_window(1), random_size=False),
                    SqueezeDimd(keys, dim=d.slice_axis + 1),  # + 1: the channel comes first
                    SpatialPadd(keys, common),
                ]
            )
            for d in table
        ]
    )


class DomainLabeld(MapTransform):
    """Map raw mask values to class indices with each domain's ``label_values``."""

    def __init__(self, keys: Any, table: Sequence[DomainRow], domain_key: str = "domain"):
        super().__init__(keys)
        self.maps = [d.value_map() for d in table]
        self.domain_key = domain_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        mapping = self.maps[int(torch.as_tensor(d[self.domain_key]))]
        if not mapping:
            return d
        for key in self.key_iterator(d):
            x = d[key]
            out = x.clone()
            for raw, cls in mapping.items():
                out[x == raw] = cls
            d[key] = out
        return d


class DomainInputCheckd(MapTransform):
    """Warn (:class:`DomainShiftWarning`) when an image's spacing or intensity range lies far
    outside what its domain was trained on (the card's statistics). Place it after loading."""

    def __init__(self, keys: Any, card: ModelCard, domain_key: str = "domain", far: float = FAR):
        super().__init__(keys)
        self.card, self.domain_key, self.far = card, domain_key, far

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        k = int(torch.as_tensor(d[self.domain_key]))
        if k >= len(self.card.stats):
            return d
        for key in self.key_iterator(d):
            x = d[key]
            affine = x.affine if isinstance(x, MetaTensor) else np.eye(4)
            why = shift_message(self.card.stats[k], volume_stats(x, affine), self.far)
            if why:
                name = x.meta.get("filename_or_obj", key) if isinstance(x, MetaTensor) else key
                warnings.warn(
                    f"{name}: {why} for domain '{self.card.domains[k].name}'; "
                    "its segmentation may be unreliable.",
                    DomainShiftWarning,
                    stacklevel=2,
                )
        return d
