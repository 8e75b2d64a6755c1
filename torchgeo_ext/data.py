"""Datamodules for dense pretraining and fine-tuning: ``rs_seg`` (Dubai aerial scenes, class-index
masks, any band count) and the ISPRS Potsdam layout.

Both index fixed windows once (source, row, col) and read only those windows per sample, so a
batch holds patches, never whole tiles (torchgeo's ``Potsdam2DDataModule`` stacks 6000x6000 tiles).
Label-fraction subsets draw a fixed-seed fraction of the labelled training windows; validation
windows come from training scenes/tiles held out, never from the test split.
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchgeo.datamodules import BaseDataModule

from plugins.errors import UserInputError

IGNORE_INDEX = 255


def grid_windows(height: int, width: int, size: int, stride: int) -> np.ndarray:
    """Top-left (row, col) of every full ``size`` window on a grid from (0, 0): (N, 2)."""
    rows = np.arange(0, height - size + 1, stride)
    cols = np.arange(0, width - size + 1, stride)
    return np.stack(np.meshgrid(rows, cols, indexing="ij"), -1).reshape(-1, 2)


def label_subset(n: int, fraction: float, seed: int = 0) -> np.ndarray:
    """Fixed-seed subset of ``round(fraction * n)`` (at least 1) of ``n`` window indices, sorted."""
    if not 0 < fraction <= 1:
        raise UserInputError(f"label_fraction must be in (0, 1], got {fraction}.")
    k = max(1, round(fraction * n))
    return np.sort(np.random.default_rng(seed).permutation(n)[:k])


def nonfinite_counts(block: np.ndarray, nodata: float | None = None) -> tuple[int, int, int]:
    """NaN/inf in a (C, H, W) raster block: (values, pixels) the file does not declare as nodata,
    and the pixels it does (NaN when the file's ``nodata`` is NaN). Integer blocks: all zero."""
    if not np.issubdtype(block.dtype, np.floating):
        return 0, 0, 0
    bad = ~np.isfinite(block)
    if not bad.any():
        return 0, 0, 0
    declared = np.zeros_like(bad)
    if nodata is not None and np.isnan(nodata):
        declared = np.isnan(block)
    undeclared = bad & ~declared
    pixels = undeclared.any(axis=0) if block.ndim == 3 else undeclared
    nodata_px = declared.any(axis=0) if block.ndim == 3 else declared
    return int(undeclared.sum()), int(pixels.sum()), int(nodata_px.sum())


def raise_nonfinite(path: str | Path, counts: tuple[int, int, int]) -> None:
    """One sentence naming ``path`` and the count, for the counts of :func:`nonfinite_counts`."""
    values, pixels, nodata = counts
    if values:
        raise UserInputError(
            f"{path} contains {values} NaN or infinite values ({pixels} pixels) that the file does "
            "not declare as nodata; clean or mask them first."
        )
    if nodata:
        raise UserInputError(
            f"{path} has {nodata} nodata (NaN) pixels, which GLCNet cannot use yet; crop or fill "
            "them first."
        )


def check_raster_finite(
    image: np.ndarray, path: str | Path, nodata: float | None = None
) -> np.ndarray:
    """``image`` unchanged, or one sentence naming ``path`` and the NaN/inf count."""
    raise_nonfinite(path, nonfinite_counts(image, nodata))
    return image


def to_unit(image: np.ndarray) -> torch.Tensor:
    """(C, H, W) integer or float array -> float32 tensor in [0, 1] (integers by their dtype's max)."""
    if np.issubdtype(image.dtype, np.integer):
        return torch.from_numpy(image.astype(np.float32) / float(np.iinfo(image.dtype).max))
    return torch.from_numpy(np.clip(image.astype(np.float32), 0, 1))


class WindowDataset(Dataset):
    """Samples ``{"image": (C, s, s) float in [0, 1], "mask": (s, s) int64}`` from a window table.

    Args:
        read: ``read(source, row, col, size) -> (image (C, s, s), mask (s, s) or None)``.
        windows: (N, 3) int array of (source, row, col).
        size: window side.
        augment: random flips and rot90 (fine-tuning).
    """

    def __init__(self, read: Any, windows: np.ndarray, size: int, augment: bool = False):
        self.read, self.windows, self.size, self.augment = read, np.asarray(windows), size, augment

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        src, row, col = (int(v) for v in self.windows[i])
        image, mask = self.read(src, row, col, self.size)
        image = to_unit(np.ascontiguousarray(image))
        mask_t = (
            torch.from_numpy(np.ascontiguousarray(mask).astype(np.int64))
            if mask is not None
            else None
        )
        if self.augment:
            k = int(torch.randint(4, ()))
            flip = bool(torch.rand(()) < 0.5)
            image = torch.rot90(image, k, (1, 2))
            image = image.flip(2) if flip else image
            if mask_t is not None:
                mask_t = torch.rot90(mask_t, k, (0, 1))
                mask_t = mask_t.flip(1) if flip else mask_t
        sample = {"image": image.contiguous()}
        if mask_t is not None:
            sample["mask"] = mask_t.contiguous()
        return sample


class _WindowDataModule(BaseDataModule):
    """torchgeo datamodule over :class:`WindowDataset` (``torchgeo fit`` needs a BaseDataModule)."""

    def __init__(self, batch_size: int, num_workers: int):
        super().__init__(WindowDataset, batch_size, num_workers)

    def prepare_data(self) -> None:
        """Nothing to download: the data is local."""

    def on_after_batch_transfer(
        self, batch: dict[str, torch.Tensor], dataloader_idx: int
    ) -> dict[str, torch.Tensor]:
        """Images are already in [0, 1]; GLCNetTask makes its own views."""
        return batch

    def _loader(self, ds: Dataset | None, shuffle: bool) -> DataLoader:
        if ds is None or len(ds) == 0:
            raise UserInputError(
                f"{type(self).__name__}: no windows for this split (check root and tile lists)."
            )
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            shuffle=shuffle,
            drop_last=shuffle and len(ds) > self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, False)


# ---------------------------------------------------------------------------------------------
# rs_seg: Dubai aerial scenes (../shared/data/rs_seg), RGB JPEG + class-index PNG masks
# ---------------------------------------------------------------------------------------------


def rs_seg_root(root: str | Path | None = None) -> Path:
    from plugins.data import shared_path

    path = Path(root) if root is not None else shared_path("rs_seg")
    if not (path / "splits.csv").exists():
        raise UserInputError(
            f"rs_seg folder {path} has no splits.csv (expected the layout of shared/data/rs_seg)."
        )
    return path


def rs_seg_scenes(
    root: str | Path | None, split: str, tiles: Sequence[int] | None = None
) -> list[str]:
    """Scene names of a split ('train'/'test'), optionally only the given tiles."""
    rows = list(csv.DictReader(open(rs_seg_root(root) / "splits.csv")))
    names = [
        r["name"]
        for r in rows
        if r["split"] == split and (tiles is None or int(r["tile"]) in tiles)
    ]
    return sorted(names)


def load_scene(
    root: str | Path | None, name: str, scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """One scene as (C, H, W) uint8 image and (H, W) uint8 mask, resized by ``scale`` (area / nearest)."""
    from PIL import Image

    base = rs_seg_root(root)
    img = Image.open(base / "images" / f"{name}.jpg").convert("RGB")
    msk = Image.open(base / "masks" / f"{name}.png")
    if scale != 1.0:
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        img = img.resize(size, Image.BOX)
        msk = msk.resize(size, Image.NEAREST)
    return np.asarray(img).transpose(2, 0, 1).copy(), np.asarray(msk).copy()


class RSSegDataModule(_WindowDataModule):
    """The ``rs_seg`` folder: pretraining (``labels=False``) or fine-tuning windows.

    Args:
        root: the folder (default: ``shared/data/rs_seg``).
        patch_size: window side (after ``scale``); 256 = the README's listed windows at scale 1.
        stride: grid step (default ``patch_size``: non-overlapping, as ``patches_256.csv``).
        scale: resize scenes by this factor first (reduced-scale CPU runs).
        label_fraction: fraction of labelled training windows used (fixed ``seed``).
        val_tiles: training tiles held out for validation (README: tile 3 or 2).
        labels: return masks (fine-tuning) or images only (pretraining).
    """

    num_classes = 6
    classes = ("building", "land", "road", "vegetation", "water", "unlabeled")

    def __init__(
        self,
        root: str | None = None,
        patch_size: int = 256,
        stride: int | None = None,
        scale: float = 1.0,
        batch_size: int = 16,
        num_workers: int = 0,
        label_fraction: float = 1.0,
        seed: int = 0,
        val_tiles: Sequence[int] = (3,),
        labels: bool = True,
        augment: bool = True,
    ):
        super().__init__(batch_size, num_workers)
        self.root, self.patch_size, self.stride = root, patch_size, stride or patch_size
        self.scale, self.label_fraction, self.seed = scale, label_fraction, seed
        self.val_tiles, self.labels, self.augment = tuple(val_tiles), labels, augment
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def _windows(self, names: list[str]) -> tuple[Any, np.ndarray]:
        scenes = [self._cache.setdefault(n, load_scene(self.root, n, self.scale)) for n in names]
        rows = []
        for i, (img, _) in enumerate(scenes):
            w = grid_windows(img.shape[1], img.shape[2], self.patch_size, self.stride)
            rows.append(np.concatenate([np.full((len(w), 1), i), w], 1))
        table = np.concatenate(rows) if rows else np.zeros((0, 3), dtype=np.int64)
        labels = self.labels

        def read(src: int, r: int, c: int, s: int) -> tuple[np.ndarray, np.ndarray | None]:
            img, msk = scenes[src]
            return img[:, r : r + s, c : c + s], (msk[r : r + s, c : c + s] if labels else None)

        return read, table

    def setup(self, stage: str | None = None) -> None:
        tile_of = lambda n: int(n.split("_")[0].removeprefix("tile"))  # noqa: E731
        train = [n for n in rs_seg_scenes(self.root, "train") if tile_of(n) not in self.val_tiles]
        val = [n for n in rs_seg_scenes(self.root, "train") if tile_of(n) in self.val_tiles]
        read, table = self._windows(train)
        if self.labels and self.label_fraction < 1:
            table = table[label_subset(len(table), self.label_fraction, self.seed)]
        self.train_dataset = WindowDataset(
            read, table, self.patch_size, augment=self.augment and self.labels
        )
        if val:
            read_v, table_v = self._windows(val)
            self.val_dataset = WindowDataset(read_v, table_v, self.patch_size)

    def test_scenes(self) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """Whole test scenes (name, image (C, H, W) uint8, mask (H, W)) for sliding-window evaluation."""
        return [
            (n, *load_scene(self.root, n, self.scale)) for n in rs_seg_scenes(self.root, "test")
        ]


# ---------------------------------------------------------------------------------------------
# ISPRS Potsdam layout
# ---------------------------------------------------------------------------------------------


def potsdam_meta() -> tuple[dict[str, list[str]], tuple[str, ...], np.ndarray]:
    """torchgeo's Potsdam tile lists, class names and colour table (one source of truth)."""
    from torchgeo.datasets.potsdam import Potsdam2D

    return Potsdam2D.splits, Potsdam2D.classes, np.asarray(Potsdam2D.colormap, dtype=np.uint8)


def rgb_to_index(rgb: np.ndarray, colormap: np.ndarray) -> tuple[np.ndarray, int]:
    """(3, H, W) colour label -> (H, W) uint8 class index; colours outside the table become
    :data:`IGNORE_INDEX` (never a class). Returns the map and the number of such pixels."""
    code = (
        (rgb[0].astype(np.int32) << 16) | (rgb[1].astype(np.int32) << 8) | rgb[2].astype(np.int32)
    )
    table = (
        (colormap[:, 0].astype(np.int32) << 16)
        | (colormap[:, 1].astype(np.int32) << 8)
        | colormap[:, 2]
    )
    out = np.full(code.shape, IGNORE_INDEX, dtype=np.uint8)
    for k, v in enumerate(table):  # 6 colours, vectorised over pixels
        out[code == v] = k
    return out, int((out == IGNORE_INDEX).sum())


def potsdam_files(root: str | Path, names: Sequence[str]) -> list[tuple[Path, Path]]:
    """(image, label) paths of the tiles present under ``root`` (ISPRS or torchgeo layout)."""
    root = Path(root)
    found = []
    for name in names:
        img = root / "4_Ortho_RGBIR" / f"{name}_RGBIR.tif"
        lab = next(
            (
                p
                for p in (root / f"{name}_label.tif", root / "5_Labels_all" / f"{name}_label.tif")
                if p.exists()
            ),
            None,
        )
        if img.exists() and lab is not None:
            found.append((img, lab))
    return found


class PotsdamReader:
    """Windowed rasterio reads from Potsdam tiles; counts label colours outside the table."""

    def __init__(self, files: list[tuple[Path, Path]], colormap: np.ndarray, bands: int = 4):
        self.files, self.colormap, self.bands = files, colormap, bands
        self.unknown_pixels = 0

    def shapes(self) -> list[tuple[int, int]]:
        """(height, width) of each tile; checks the band count and, for float tiles, NaN/inf
        (read block by block, so memory stays bounded; integer tiles cannot hold them)."""
        import rasterio

        out = []
        for img, _ in self.files:
            try:
                with rasterio.open(img) as ds:
                    if ds.count != self.bands:
                        raise UserInputError(
                            f"{img} has {ds.count} bands, expected {self.bands} (RGB+IR)."
                        )
                    if any(np.issubdtype(np.dtype(d), np.floating) for d in ds.dtypes):
                        counts = np.zeros(3, np.int64)
                        for _, win in ds.block_windows(1):
                            counts += nonfinite_counts(ds.read(window=win), ds.nodata)
                        raise_nonfinite(img, tuple(int(c) for c in counts))
                    out.append((ds.height, ds.width))
            except rasterio.errors.RasterioIOError:
                raise UserInputError(f"{img} is not a readable GeoTIFF.") from None
        return out

    def __call__(self, src: int, row: int, col: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        import rasterio
        from rasterio.windows import Window

        img_path, lab_path = self.files[src]
        win = Window(col, row, size, size)
        with rasterio.open(img_path) as ds:
            image = ds.read(window=win)
        with rasterio.open(lab_path) as ds:
            rgb = ds.read([1, 2, 3], window=win)
        mask, unknown = rgb_to_index(rgb, self.colormap)
        if unknown:
            if self.unknown_pixels == 0:
                warnings.warn(
                    f"{lab_path}: {unknown} label pixels have colours outside the Potsdam table; mapped to ignore ({IGNORE_INDEX})",
                    stacklevel=2,
                )
            self.unknown_pixels += unknown
        return image, mask


class PotsdamPatchDataModule(_WindowDataModule):
    """ISPRS Potsdam (``4_Ortho_RGBIR/top_potsdam_*_RGBIR.tif`` + ``*_label.tif``) cut into patches.

    The window table is built once from the tile sizes; each sample reads one window with
    rasterio, so memory is bounded by the batch, not by the 6000x6000 tiles.

    Args:
        root: dataset folder.
        patch_size, stride: window side and grid step (paper: 256 patches).
        label_fraction: fraction of labelled training patches (1%, 5%, 10%, 100%), fixed ``seed``.
        val_tiles: number of training tiles (the last ones of torchgeo's list present) held out.
    """

    num_classes = 6

    def __init__(
        self,
        root: str,
        patch_size: int = 256,
        stride: int | None = None,
        batch_size: int = 16,
        num_workers: int = 0,
        label_fraction: float = 1.0,
        seed: int = 0,
        val_tiles: int = 2,
        labels: bool = True,
        augment: bool = True,
    ):
        super().__init__(batch_size, num_workers)
        self.root, self.patch_size, self.stride = Path(root), patch_size, stride or patch_size
        self.label_fraction, self.seed, self.val_tiles = label_fraction, seed, val_tiles
        self.labels, self.augment = labels, augment
        self.splits, self.classes, self.colormap = potsdam_meta()

    def _dataset(
        self, files: list[tuple[Path, Path]], subset: bool, augment: bool
    ) -> WindowDataset:
        reader = PotsdamReader(files, self.colormap)
        rows = []
        for i, ((img, _), (h, w)) in enumerate(zip(files, reader.shapes())):
            if h < self.patch_size or w < self.patch_size:
                raise UserInputError(
                    f"tile {img} is {h}x{w}, smaller than the {self.patch_size}-pixel window."
                )
            win = grid_windows(h, w, self.patch_size, self.stride)
            rows.append(np.concatenate([np.full((len(win), 1), i), win], 1))
        table = np.concatenate(rows) if rows else np.zeros((0, 3), dtype=np.int64)
        if subset and self.labels and self.label_fraction < 1:
            table = table[label_subset(len(table), self.label_fraction, self.seed)]
        read = reader if self.labels else (lambda s, r, c, z: (reader(s, r, c, z)[0], None))
        return WindowDataset(read, table, self.patch_size, augment=augment)

    def setup(self, stage: str | None = None) -> None:
        train = potsdam_files(self.root, self.splits["train"])
        if not train:
            raise UserInputError(
                f"no Potsdam training tiles under {self.root} (expected 4_Ortho_RGBIR/top_potsdam_*_RGBIR.tif and *_label.tif)."
            )
        n_val = min(self.val_tiles, len(train) - 1)
        fit, val = (train[:-n_val], train[-n_val:]) if n_val > 0 else (train, [])
        self.train_dataset = self._dataset(fit, subset=True, augment=self.augment and self.labels)
        self.val_dataset = self._dataset(val, subset=False, augment=False) if val else None
        self.test_files = potsdam_files(self.root, self.splits["test"])

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, False) if self.val_dataset is not None else []  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# one raster in memory (the embedded Sentinel-2 tile, or any GeoTIFF small enough)
# ---------------------------------------------------------------------------------------------


def load_sentinel2_tile() -> tuple[np.ndarray, list[str]]:
    """spyndex's real Sentinel-2 10 m sample (4, 300, 300) int reflectance x 10^4 and band names.

    Read straight from the JSON file spyndex ships (``spyndex.datasets.open("sentinel")`` wraps the
    same array in xarray); it carries no georeferencing.
    """
    import json
    from importlib.resources import files

    data = json.loads(files("spyndex").joinpath("data", "S2_10m.json").read_text())
    return np.asarray(data, dtype=np.int16), ["B02", "B03", "B04", "B08"]


def band_range(
    image: np.ndarray, low: float = 1.0, high: float = 99.0
) -> tuple[list[float], list[float]]:
    """Per-band percentiles (the stretch stored with checkpoints for prediction)."""
    flat = image.reshape(image.shape[0], -1).astype(np.float64)
    return np.percentile(flat, low, axis=1).tolist(), np.percentile(flat, high, axis=1).tolist()


class ArrayCropDataset(Dataset):
    """Random ``size`` crops of one (C, H, W) float array in [0, 1]; ``length`` samples per epoch.

    The crop of sample ``i`` is drawn once, from ``seed``, when the dataset is built: the samples do
    not depend on the global RNG or on the order they are read in, so a training run resumed from a
    checkpoint sees the same batches as an uninterrupted one.
    """

    def __init__(
        self, image: np.ndarray, size: int, length: int, seed: int = 0, what: str = "image"
    ):
        if image.shape[1] < size or image.shape[2] < size:
            raise UserInputError(
                f"image of {image.shape[1]}x{image.shape[2]} pixels is smaller than the {size}-pixel crop."
            )
        check_raster_finite(image, what)
        self.image, self.size, self.length = (
            torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
            size,
            length,
        )
        _, h, w = self.image.shape
        g = torch.Generator().manual_seed(seed)
        self.rows = torch.randint(h - size + 1, (length,), generator=g)
        self.cols = torch.randint(w - size + 1, (length,), generator=g)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        r, c = int(self.rows[i]), int(self.cols[i])
        return {"image": self.image[:, r : r + self.size, c : c + self.size]}
