"""Any GeoTIFFs as torchgeo datamodules: ``torchgeo fit --config`` with
``class_path: torchgeo_ext.geotiff.GeoTiffDataModule``.

Reading, CRS, resolution and tiling are torchgeo's: the rasters are :class:`GeoTiffRaster`
(a :class:`torchgeo.datasets.RasterDataset`), images and labels are joined by an
:class:`~torchgeo.datasets.IntersectionDataset`, and windows come from
:class:`~torchgeo.samplers.GridGeoSampler` over a region of interest per split.

nodata (the files' own value, which must agree, or ``nodata=`` for all files) is respected everywhere:

* a pixel is nodata when **any** selected band is nodata (or outside every file);
* the band stretch (per-band 1st/99th percentiles, stored in checkpoints for ``predict``) is
  computed from valid pixels only;
* training windows whose nodata fraction exceeds ``max_nodata`` are skipped (chosen over masking
  GLCNet's loss: its global style statistics and local windows would otherwise mix in filled
  pixels); the nodata pixels left in kept windows are set to 0 after the stretch and their labels
  to ``ignore_index``, so no loss sees them as a class;
* label-fraction subsets count only windows with at least one labelled, valid pixel.

Splits (fine-tuning): the extent is cut along y into train (top), validation and test (bottom)
bands of ``val_fraction`` / ``test_fraction`` of the rows, snapped to whole pixels, or set
``val_roi`` / ``test_roi`` explicitly as ``[xmin, ymin, xmax, ymax]`` in the dataset CRS. Every
window lies entirely inside its split's area, so no validation window reads a test pixel.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.merge
import shapely
import torch
from rasterio.errors import NodataShadowWarning
from rasterio.features import geometry_mask
from rasterio.transform import from_origin
from torch import Tensor
from torch.utils.data import DataLoader
from torchgeo.datamodules import GeoDataModule
from torchgeo.datasets import IntersectionDataset, RasterDataset
from torchgeo.datasets.errors import DatasetNotFoundError
from torchgeo.samplers import GeoSampler, GridGeoSampler

from plugins.errors import UserInputError
from torchgeo_ext.data import IGNORE_INDEX, label_subset
from torchgeo_ext.options import OUTPUT_STRIDE

__all__ = [
    "GeoTiffRaster",
    "GeoTiffDataModule",
    "WindowSampler",
    "resolve_bands",
    "split_rois",
]

PERCENTILES = (1.0, 99.0)
"""Band stretch: the same percentiles as :func:`torchgeo_ext.data.band_range` (``run``)."""


def resolve_bands(
    path: str | Path, bands: Sequence[int | str] | None
) -> tuple[list[int], list[str]]:
    """1-based band numbers and names of ``bands`` in ``path``.

    ``bands`` items are 1-based band numbers (``1`` is the first band, as in GDAL and rasterio) or
    band names, i.e. the file's band descriptions (``gdalinfo`` shows them); ``None`` = all bands.
    Names default to ``band1``, ``band2``, ... where the file has none.
    """
    with rasterio.open(path) as ds:
        count, desc = ds.count, ds.descriptions
    names = [d or f"band{i + 1}" for i, d in enumerate(desc)]
    if bands is None or len(bands) == 0:
        return list(range(1, count + 1)), names
    out = []
    for b in bands:
        text = str(b).strip()
        if text.isdigit():
            number = int(text)
            if not 1 <= number <= count:
                raise UserInputError(
                    f"bands: {number} is not a band of {path}, which has {count} (numbers are "
                    f"1-based, 1 to {count})."
                )
        elif text in names:
            number = names.index(text) + 1
        else:
            raise UserInputError(
                f"bands: {text!r} is not a band of {path}; give 1-based numbers or one of its "
                f"band names ({', '.join(names)})."
            )
        out.append(number)
    return out, [names[i - 1] for i in out]


def _same_nodata(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return (np.isnan(a) and np.isnan(b)) or a == b


class GeoTiffRaster(RasterDataset):
    """Image (``is_image=True``) or label rasters (GeoTIFFs, any CRS) for torchgeo.

    Args:
        paths: files and/or folders (searched recursively for ``glob``).
        bands: see :func:`resolve_bands` (1-based numbers or names); ``None`` = all.
        nodata: value marking nodata in every file (``None``: the files' own, which must agree).
        is_image: images (float32, nodata -> NaN) or labels (int64, nodata -> ``ignore_index``).
        glob: file pattern inside folders.
        crs, res: torchgeo's: warp to this CRS / resolution (default: the first file's).

    Samples: ``image`` (C, H, W) float32 with NaN at nodata pixels (a pixel is nodata when any
    band equals the nodata value, or is NaN, or no file covers it), or ``mask`` (H, W) int64 with
    ``ignore_index`` there. :meth:`check_finite` refuses NaN/inf that no nodata declares.
    """

    filename_glob = "*.tif"

    def __init__(
        self,
        paths: str | Path | Sequence[str | Path],
        bands: Sequence[int | str] | None = None,
        nodata: float | None = None,
        is_image: bool = True,
        glob: str = "*.tif",
        crs: Any = None,
        res: float | None = None,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        self.is_image, self.filename_glob = is_image, glob
        self.ignore_index = ignore_index
        self.paths = [paths] if isinstance(paths, str | Path) else list(paths)
        files = self.files
        if not files:
            raise UserInputError(
                f"no GeoTIFFs matching {glob} under {', '.join(map(str, self.paths))}."
            )
        self.source_files = files
        self.has_crs = _with_crs(files)
        if not self.has_crs:
            self.paths, self.filename_glob = _nominal_crs_copies(files, self), "*.vrt"
            files = self.files
        # the user's own file names the bands in messages, not a temporary VRT copy of it
        first = self.source_files[0]
        numbers, self.band_names = resolve_bands(first, bands if is_image else None)
        with rasterio.open(first) as ds:
            count = ds.count
            self.nodata_value = nodata if nodata is not None else ds.nodata
        if not is_image and count != 1:
            raise UserInputError(
                f"label raster {first} has {count} bands; expected one band of class indices."
            )
        self.band_numbers = numbers
        self.all_bands = tuple(str(i) for i in range(1, count + 1))
        try:
            super().__init__(self.paths, crs=crs, res=res, bands=[str(i) for i in numbers])
        except DatasetNotFoundError:
            raise UserInputError(
                f"no readable GeoTIFFs under {', '.join(map(str, self.paths))}."
            ) from None
        first_nodata = None
        for i, f in enumerate(self.source_files):
            with rasterio.open(f) as ds:
                if ds.count != count:
                    raise UserInputError(
                        f"{f} has {ds.count} bands but {first} has {count}; all rasters of one "
                        "dataset need the same bands."
                    )
                if i == 0:
                    first_nodata = ds.nodata
                elif nodata is None and not _same_nodata(ds.nodata, first_nodata):
                    # one value marks nodata in every file: another file's would be read as data
                    raise UserInputError(
                        f"{f} declares nodata {ds.nodata} but {first} declares "
                        f"{first_nodata}; give one value for all files with nodata=."
                    )

    def _merge_files(
        self, filepaths: Sequence[str], query: Any, band_indexes: Sequence[int] | None = None
    ) -> Tensor:
        """torchgeo's merge into float32 (NaN where no file covers), then nodata -> NaN (images)
        or ``ignore_index`` (labels). Masks come from the nodata value only, never from an alpha
        band: GDAL reads the 4th band of an RGB-like uint8 file as alpha, which for RGB+IR
        imagery is the infrared band."""
        handles = [
            self._cached_load_warp_file(fp) if self.cache else self._load_warp_file(fp)
            for fp in filepaths
        ]
        x, y, _ = self._disambiguate_slice(query)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NodataShadowWarning)
            data, _ = rasterio.merge.merge(
                handles,
                (x.start, y.start, x.stop, y.stop),
                (x.step, y.step),
                indexes=band_indexes,
                resampling=self.resampling,
                nodata=np.nan,
                dtype="float32",
                method=_copy_first_ignoring_masks,
            )
        invalid = ~np.isfinite(data).all(0)
        if self.nodata_value is not None and not np.isnan(self.nodata_value):
            invalid |= (data == np.float32(self.nodata_value)).any(0)
        if self.is_image:
            data[:, invalid] = np.nan
        else:
            data[:, invalid] = self.ignore_index
        return torch.from_numpy(data)

    def check_finite(self) -> None:
        """One sentence when a float file holds NaN/inf that its nodata does not declare
        (read block by block; integer files cannot hold them)."""
        from torchgeo_ext.data import nonfinite_counts, raise_nonfinite

        for f in self.source_files:
            with rasterio.open(f) as ds:
                if not any(np.issubdtype(np.dtype(d), np.floating) for d in ds.dtypes):
                    continue
                counts = np.zeros(3, np.int64)
                for _, win in ds.block_windows(1):
                    counts += nonfinite_counts(ds.read(self.band_numbers, window=win), ds.nodata)
                raise_nonfinite(f, (int(counts[0]), int(counts[1]), 0))


def _with_crs(files: Sequence[str]) -> bool:
    """True when every file has a CRS, False when none has; one sentence for a mix."""
    flags = []
    for f in files:
        try:
            with rasterio.open(f) as ds:
                flags.append(ds.crs is not None)
        except rasterio.errors.RasterioIOError:
            raise UserInputError(f"{f} is not a readable GeoTIFF.") from None
    if any(flags) and not all(flags):
        missing = files[flags.index(False)]
        raise UserInputError(f"{missing} has no CRS but other rasters have one; give it a CRS.")
    return all(flags)


def _nominal_crs_copies(files: Sequence[str], owner: Any) -> list[str]:
    """VRT copies (in a temporary folder kept by ``owner``) of rasters that have no CRS, with a
    nominal EPSG:3857 so that torchgeo can index them: their own transform is kept, so they are
    read on their own pixel grid, never warped; outputs of ``predict`` carry no CRS either."""
    import tempfile

    import rasterio.shutil

    owner._tmp = tempfile.TemporaryDirectory(prefix="geotiff_nocrs_")
    out = []
    for i, f in enumerate(files):
        vrt = str(Path(owner._tmp.name) / f"{i:05d}_{Path(f).stem}.vrt")
        rasterio.shutil.copy(str(Path(f).resolve()), vrt, driver="VRT")
        with rasterio.open(vrt, "r+") as ds:
            ds.crs = "EPSG:3857"
        out.append(vrt)
    return out


def _copy_first_ignoring_masks(
    merged_data: np.ndarray, new_data: np.ndarray, merged_mask: np.ndarray, new_mask: Any, **_: Any
) -> None:
    """rasterio merge method: the first file covering a pixel gives its value, masks ignored."""
    np.copyto(merged_data, np.ma.getdata(new_data), where=merged_mask, casting="unsafe")


class WindowSampler(GeoSampler):
    """A fixed list of windows (from :class:`~torchgeo.samplers.GridGeoSampler`), reshuffled each
    epoch from ``seed`` when ``shuffle``; ``length`` draws per epoch (default: all windows)."""

    def __init__(
        self,
        dataset: Any,
        windows: Sequence[tuple[slice, slice, slice]],
        shuffle: bool = False,
        seed: int = 0,
        length: int | None = None,
    ) -> None:
        super().__init__(dataset)
        self.windows, self.shuffle, self.length = list(windows), shuffle, length
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self):  # type: ignore[override]
        n = len(self.windows)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        if self.length is not None and self.length > n:
            order = torch.cat(
                [order, torch.randint(n, (self.length - n,), generator=self.generator)]
            )
        for i in order[: len(self)].tolist():
            yield self.windows[i]

    def __len__(self) -> int:
        return self.length if self.length is not None else len(self.windows)


def _box(bounds: Sequence[float], what: str) -> shapely.Polygon:
    if len(bounds) != 4 or not (bounds[0] < bounds[2] and bounds[1] < bounds[3]):
        raise UserInputError(
            f"{what}={list(bounds)}: expected [xmin, ymin, xmax, ymax] with xmin < xmax and ymin < ymax."
        )
    return shapely.box(*bounds)


def split_rois(
    extent: tuple[float, float, float, float],
    res: tuple[float, float],
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    val_roi: Sequence[float] | None = None,
    test_roi: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Train / val / test areas (shapely polygons, ``None`` when empty) that never overlap.

    Without explicit ROIs the extent is cut along y: test = the bottom ``test_fraction`` of the
    rows, validation the ``val_fraction`` above it, train the rest (whole pixels)."""
    xmin, ymin, xmax, ymax = extent
    full = shapely.box(*extent)
    if val_roi is None and test_roi is None:
        if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
            raise UserInputError(
                f"val_fraction={val_fraction} and test_fraction={test_fraction}: expected "
                "non-negative fractions that leave rows for training (sum below 1)."
            )
        rows = round((ymax - ymin) / res[1])
        n_test, n_val = round(test_fraction * rows), round(val_fraction * rows)
        y_test, y_val = ymin + n_test * res[1], ymin + (n_test + n_val) * res[1]
        test = shapely.box(xmin, ymin, xmax, y_test) if n_test else None
        val = shapely.box(xmin, y_test, xmax, y_val) if n_val else None
        return {"train": shapely.box(xmin, y_val, xmax, ymax), "val": val, "test": test}
    val = _box(val_roi, "val_roi").intersection(full) if val_roi is not None else None
    test = _box(test_roi, "test_roi").intersection(full) if test_roi is not None else None
    if val is not None and test is not None and val.intersection(test).area > 0:
        raise UserInputError(
            f"val_roi={list(val_roi or [])} overlaps test_roi={list(test_roi or [])}; the "
            "validation area must not overlap the test area."
        )
    train = full
    for other in (val, test):
        if other is not None:
            train = train.difference(other)
    return {"train": train if train.area > 0 else None, "val": val, "test": test}


def _window_box(q: tuple[slice, slice, slice]) -> shapely.Polygon:
    return shapely.box(q[0].start, q[1].start, q[0].stop, q[1].stop)


class GeoTiffDataModule(GeoDataModule):
    """GeoTIFFs for GLCNet pretraining (no labels) or segmentation fine-tuning (with labels).

    Args:
        paths: image GeoTIFFs and/or folders of them.
        label_paths: label GeoTIFFs / folders (one band of class indices); ``None`` = pretraining.
        bands: band selection, 1-based numbers or names (see :func:`resolve_bands`).
        nodata: nodata value of every file (default: the files' own, which must agree).
        patch_size: window side in pixels; with labels a multiple of the network's output stride.
        stride: grid step of the training windows (default ``patch_size``).
        batch_size, num_workers: the loaders'.
        length: training windows per epoch (default: every kept window once).
        label_fraction: fraction of the labelled training windows used (fixed ``seed``).
        val_fraction, test_fraction, val_roi, test_roi: the splits (see the module docstring);
            pretraining uses the whole extent.
        max_nodata: training windows with a larger nodata fraction are skipped.
        num_classes: class count (default: the largest label seen + 1).
        ignore_index: label value left out of the loss (and given to nodata pixels).
        image_glob, label_glob: file patterns inside folders.
        max_stat_pixels: valid pixels per band sampled for the stretch (all when fewer).
        augment: random flips / 90-degree rotations of fine-tuning batches (:func:`dihedral`).

    After ``setup``: ``summary`` (files, CRS, bands, nodata fraction, windows and class pixels per
    split), printed once and saved in checkpoints with the band stretch
    (:meth:`state_dict`), which ``contrastive-plugins predict glcnet`` reads.
    """

    def __init__(
        self,
        paths: str | Sequence[str],
        label_paths: str | Sequence[str] | None = None,
        bands: Sequence[int | str] | None = None,
        nodata: float | None = None,
        patch_size: int = 256,
        stride: int | None = None,
        batch_size: int = 16,
        num_workers: int = 0,
        length: int | None = None,
        label_fraction: float = 1.0,
        seed: int = 0,
        val_fraction: float = 0.2,
        test_fraction: float = 0.2,
        val_roi: Sequence[float] | None = None,
        test_roi: Sequence[float] | None = None,
        max_nodata: float = 0.5,
        num_classes: int | None = None,
        ignore_index: int = IGNORE_INDEX,
        image_glob: str = "*.tif",
        label_glob: str = "*.tif",
        max_stat_pixels: int = 1_000_000,
        augment: bool = True,
    ) -> None:
        super().__init__(GeoTiffRaster, batch_size, patch_size, length, num_workers)
        if not 0 <= max_nodata < 1:
            raise UserInputError(f"max_nodata={max_nodata}: expected a fraction in [0, 1).")
        if patch_size < 1 or (stride is not None and stride < 1):
            raise UserInputError(
                f"patch_size={patch_size}, stride={stride}: expected positive pixel counts."
            )
        label_subset(1, label_fraction)  # one sentence for a bad fraction, before any reading
        self.paths, self.label_paths, self.bands, self.nodata = paths, label_paths, bands, nodata
        self.stride = stride or patch_size
        self.label_fraction, self.seed, self.max_nodata = label_fraction, seed, max_nodata
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.val_roi, self.test_roi = val_roi, test_roi
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.image_glob, self.label_glob, self.max_stat_pixels = (
            image_glob,
            label_glob,
            max_stat_pixels,
        )
        self.augment = augment
        self.summary: dict[str, Any] = {}
        self.band_min: list[float] | None = None
        self.band_max: list[float] | None = None
        self.rois: dict[str, Any] = {}
        self.windows: dict[str, list[tuple[slice, slice, slice]]] = {}
        self._ready = False

    # ---------------------------------------------------------------------------------------
    @property
    def labelled(self) -> bool:
        return self.label_paths is not None

    def build_dataset(self) -> Any:
        """The image raster dataset, intersected with the labels when there are labels."""
        images = GeoTiffRaster(self.paths, self.bands, self.nodata, True, self.image_glob)
        self.images = images
        if not self.labelled:
            return images
        labels = GeoTiffRaster(
            self.label_paths, None, None, False, self.label_glob, ignore_index=self.ignore_index
        )
        try:
            return IntersectionDataset(images, labels)
        except RuntimeError as err:
            raise UserInputError(f"the label rasters do not overlap the images ({err}).") from None

    def _read(self, ds: Any, q: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        sample = ds[q]
        image = sample["image"].numpy()
        mask = sample["mask"].numpy() if "mask" in sample else None
        return image, np.isfinite(image).all(0), mask

    def _grid(self, ds: Any, roi: Any, stride: int) -> list[tuple[slice, slice, slice]]:
        """Windows of ``patch_size`` on a grid inside ``roi`` (torchgeo's GridGeoSampler); the
        last row and column are moved back inside the area, so every pixel is covered, and
        windows that leave a non-rectangular area are dropped."""
        res = ds.res
        sx, sy = self.patch_size * res[0], self.patch_size * res[1]
        rxmin, rymin, rxmax, rymax = roi.bounds
        inside = roi.buffer(1e-6 * min(res))
        out, seen = [], set()
        for q in GridGeoSampler(ds, self.patch_size, stride, roi=roi):
            x0 = max(rxmin, min(q[0].start, rxmax - sx))
            y0 = max(rymin, min(q[1].start, rymax - sy))
            q = (slice(x0, x0 + sx), slice(y0, y0 + sy), q[2])
            key = (round(x0 / res[0]), round(y0 / res[1]))
            if key in seen or not inside.covers(_window_box(q)):
                continue
            seen.add(key)
            out.append(q)
        return out

    def _pass(self, ds: Any, roi: Any, name: str, stride: int) -> dict[str, Any]:
        """One read of every grid window of ``roi``: the windows kept (nodata fraction at most
        ``max_nodata`` and, with labels, a labelled valid pixel), the number skipped, and over
        the area the windows cover (each pixel counted once) the pixels, nodata pixels, class
        pixels and, for train, a sample of valid values per band for the stretch."""
        res, p = ds.res, self.patch_size
        windows = self._grid(ds, roi, stride)
        xs = sorted({round(q[0].start / res[0]) for q in windows})
        ys = sorted({round(q[1].start / res[1]) for q in windows})
        nxt_x = dict(zip(xs, xs[1:] + [None]))
        nxt_y = dict(zip(ys, ys[1:] + [None]))
        total = nodata = 0
        classes = np.zeros(0, np.int64)
        values: list[np.ndarray] = []
        kept = []
        per_window = max(1, self.max_stat_pixels // max(1, len(windows)))
        rng = np.random.default_rng(self.seed)
        for q in windows:
            image, valid, mask = self._read(ds, q)
            if 1 - valid.mean() <= self.max_nodata and (
                mask is None or ((mask != self.ignore_index) & valid).any()
            ):
                kept.append(q)
            # the part of this window no other window owns: up to the next start on each axis
            ix, iy = round(q[0].start / res[0]), round(q[1].start / res[1])
            own_w = min(p, nxt_x[ix] - ix) if nxt_x[ix] is not None else p
            own_h = min(p, nxt_y[iy] - iy) if nxt_y[iy] is not None else p
            owned = np.zeros(valid.shape, bool)
            owned[p - own_h :, :own_w] = True  # rows run from the top (y0 + size) down
            owned &= geometry_mask(
                [roi], valid.shape, from_origin(q[0].start, q[1].stop, res[0], res[1]), invert=True
            )
            total += int(owned.sum())
            nodata += int((owned & ~valid).sum())
            good = owned & valid
            if mask is not None:
                lab = mask[good & (mask != self.ignore_index)].astype(np.int64)
                counts = np.bincount(lab, minlength=len(classes))
                counts[: len(classes)] += classes
                classes = counts
            if name == "train":
                pix = image[:, good]
                if pix.shape[1] > per_window:
                    pix = pix[:, rng.choice(pix.shape[1], per_window, replace=False)]
                values.append(pix)
        return {
            "kept": kept,
            "skipped": len(windows) - len(kept),
            "pixels": total,
            "nodata": nodata,
            "classes": classes,
            "values": values,
        }

    def setup(self, stage: str | None = None) -> None:
        """Index the rasters, cut the splits, scan nodata / classes / the stretch and check the
        model in the trainer (band count, window size) -- all before any training step."""
        if not self._ready:
            self._prepare()
        self._check_model(after_scan=True)

    def _prepare(self) -> None:
        ds = self.build_dataset()
        self._check_model(after_scan=False)  # band count and window size: before any reading
        self.images.check_finite()
        x, y, _ = ds.bounds
        extent = (x.start, y.start, x.stop, y.stop)
        if self.labelled:
            self.rois = split_rois(
                extent, ds.res, self.val_fraction, self.test_fraction, self.val_roi, self.test_roi
            )
        else:
            self.rois = {"train": shapely.box(*extent), "val": None, "test": None}
        splits: dict[str, Any] = {}
        scans = {}
        for name, roi in self.rois.items():
            if roi is None or roi.area == 0:
                continue
            stride = self.stride if name == "train" else self.patch_size
            scans[name] = s = self._pass(ds, roi, name, stride)
            kept = s["kept"]
            if name == "train" and self.labelled:
                splits["train_windows_with_labels"] = len(kept)
                if kept and self.label_fraction < 1:
                    kept = [
                        kept[i] for i in label_subset(len(kept), self.label_fraction, self.seed)
                    ]
            self.windows[name] = kept
            splits[name] = {
                "roi": [round(v, 6) for v in roi.bounds],
                "windows": len(kept),
                "windows_skipped_nodata": s["skipped"],
                "nodata_fraction": s["nodata"] / max(1, s["pixels"]),
            }
        if not self.windows.get("train"):
            raise UserInputError(
                f"no training windows of {self.patch_size} pixels with at most "
                f"{self.max_nodata:.0%} nodata in {self.paths} (smaller patch_size or larger "
                "max_nodata?)."
            )
        values = np.concatenate(scans["train"]["values"], axis=1)
        if values.shape[1] == 0:
            raise UserInputError(
                f"{self.paths}: the training area has no valid (non-nodata) pixels."
            )
        lo, hi = np.percentile(values.astype(np.float64), PERCENTILES, axis=1)
        self.band_min, self.band_max = lo.tolist(), hi.tolist()
        if self.labelled:
            seen = max(len(s["classes"]) for s in scans.values())
            k = self.num_classes if self.num_classes is not None else seen
            if seen > k:
                raise UserInputError(
                    f"the labels hold class {seen - 1} but num_classes={k}; label values must be "
                    f"0 to {k - 1} or ignore_index={self.ignore_index}."
                )
            self.num_classes = k
            for name, s in scans.items():
                splits[name]["class_pixels"] = np.pad(
                    s["classes"], (0, k - len(s["classes"]))
                ).tolist()
        total = sum(s["pixels"] for s in scans.values())
        self.summary = {
            "files": [str(f) for f in self.images.source_files],
            "crs": ds.crs.to_string() if self.images.has_crs else None,
            "res": list(ds.res),
            "bands": self.images.band_names,
            "band_numbers": self.images.band_numbers,
            "nodata": self.nodata,
            "nodata_fraction": sum(s["nodata"] for s in scans.values()) / max(1, total),
            "patch_size": self.patch_size,
            "max_nodata": self.max_nodata,
            "label_fraction": self.label_fraction if self.labelled else None,
            "num_classes": self.num_classes,
            "band_min": self.band_min,
            "band_max": self.band_max,
            "splits": splits,
        }
        print(f"{type(self).__name__}: {json.dumps(self.summary)}")
        self.dataset = ds
        for name in ("train", "val", "test"):
            wins = self.windows.get(name) or []
            setattr(self, f"{name}_dataset", ds if wins else None)
            sampler = (
                WindowSampler(
                    ds,
                    wins,
                    shuffle=name == "train",
                    seed=self.seed,
                    length=self.length if name == "train" else None,
                )
                if wins
                else None
            )
            setattr(self, f"{name}_sampler", sampler)
        self._ready = True

    def _check_model(self, after_scan: bool) -> None:
        """One sentence when the trainer's model cannot take this data (the class count only
        ``after_scan``)."""
        trainer = getattr(self, "trainer", None)
        module = getattr(trainer, "lightning_module", None) if trainer is not None else None
        hp = getattr(module, "hparams", None)
        if not hp:
            return
        n = len(self.images.band_numbers)
        want = hp.get("in_channels")
        if want is not None and want != n:
            raise UserInputError(
                f"the model takes {want} bands (in_channels) but the data has {n} "
                f"({', '.join(self.images.band_names)}); set model in_channels={n} or data "
                f"bands=[...] to {want} bands."
            )
        if "num_classes" in hp and self.patch_size % OUTPUT_STRIDE:
            raise UserInputError(
                f"patch_size={self.patch_size}: the segmentation network takes windows that are "
                f"multiples of {OUTPUT_STRIDE} pixels (its output stride)."
            )
        if (
            after_scan
            and "num_classes" in hp
            and self.num_classes is not None
            and hp["num_classes"] < self.num_classes
        ):
            raise UserInputError(
                f"the labels have {self.num_classes} classes but the model num_classes="
                f"{hp['num_classes']}."
            )
        size = hp.get("size")
        if "patch_num" in hp and size is not None and size % OUTPUT_STRIDE:
            raise UserInputError(
                f"size={size}: GLCNet's views must be multiples of {OUTPUT_STRIDE} pixels "
                "(DeepLabv3+ output stride)."
            )

    # ---------------------------------------------------------------------------------------
    def val_dataloader(self) -> DataLoader:
        return self._dataloader_factory("val") if self.val_sampler is not None else []  # type: ignore[return-value]

    def test_dataloader(self) -> DataLoader:
        if self.test_sampler is None:
            raise UserInputError(
                f"{type(self).__name__}: no test windows (set test_fraction or test_roi)."
            )
        return self._dataloader_factory("test")

    def normalise(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(..., C, H, W) raw values with NaN at nodata -> values stretched to [0, 1] by the
        training area's percentiles with nodata set to 0, and the (..., H, W) valid map."""
        valid = torch.isfinite(x).all(-3)
        lo = torch.tensor(self.band_min, dtype=x.dtype, device=x.device)[:, None, None]
        hi = torch.tensor(self.band_max, dtype=x.dtype, device=x.device)[:, None, None]
        x = ((x - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1)
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        return torch.where(valid.unsqueeze(-3), x, zero), valid

    def on_after_batch_transfer(
        self, batch: dict[str, Tensor], dataloader_idx: int
    ) -> dict[str, Tensor]:
        """Stretch each band to [0, 1] by the training area's percentiles; nodata pixels -> 0
        in the image and ``ignore_index`` in the mask."""
        batch["image"], valid = self.normalise(batch["image"])
        if "mask" in batch:
            batch["mask"] = batch["mask"].masked_fill(~valid, self.ignore_index)
            trainer = getattr(self, "trainer", None)
            if self.augment and trainer is not None and trainer.training:
                batch["image"], batch["mask"] = dihedral(batch["image"], batch["mask"])
        return batch

    def state_dict(self) -> dict[str, Any]:
        """Saved in Lightning checkpoints: what ``predict`` needs to read new rasters alike."""
        if self.band_min is None:
            return {}
        return {
            "bands": self.images.band_numbers,
            "band_names": self.images.band_names,
            "band_min": self.band_min,
            "band_max": self.band_max,
            "nodata": self.nodata,
            "num_classes": self.num_classes,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing to restore: the stretch is recomputed from the data."""


def dihedral(image: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """A random element of the square's symmetry group per sample (flips and a transpose give all
    8 rotations/reflections), the same for image (B, C, s, s) and mask (B, s, s); vectorised."""
    b = image.shape[0]
    flips = torch.rand(3, b, device=image.device) < 0.5
    for i, op in enumerate(
        (lambda t: t.flip(-1), lambda t: t.flip(-2), lambda t: t.transpose(-1, -2))
    ):
        m = flips[i]
        image = torch.where(m[:, None, None, None], op(image), image)
        mask = torch.where(m[:, None, None], op(mask), mask)
    return image, mask


class WindowDataset(torch.utils.data.Dataset):
    """``length`` training samples ``{"image": (C, s, s) in [0, 1]}`` of a set-up
    :class:`GeoTiffDataModule`: sample ``i`` is the window drawn for ``i`` from ``seed`` (so it
    does not depend on the global RNG or the reading order: ``run``'s resume is bit-exact)."""

    def __init__(self, dm: GeoTiffDataModule, length: int, seed: int = 0) -> None:
        self.dm, self.length = dm, length
        g = torch.Generator().manual_seed(seed)
        self.pick = torch.randint(len(dm.windows["train"]), (length,), generator=g).tolist()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        q = self.dm.windows["train"][self.pick[i]]
        return {"image": self.dm.normalise(self.dm.dataset[q]["image"])[0]}
