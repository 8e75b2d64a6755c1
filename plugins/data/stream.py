"""Streamed image data for Lightning: images stay on disk and are decoded in worker processes.

Three sources, one record type (:class:`ImageRecords`: what to read and its label, never pixels):

* :func:`image_folder_records` - the ImageFolder layout, ``root/<class>/**/<image>``;
* :func:`csv_records` - a CSV with a ``path`` column and an optional ``label`` column (relative
  paths are resolved against the CSV's folder; labels may be class names or integers);
* :func:`cifar10_records` - the CIFAR-10 python pickles (``data_batch_*`` / ``test_batch``).

:class:`StreamImageDataModule` turns records into train/val loaders. Workers (``num_workers``,
default ``min(4, cpu count)``) decode and resize each image to ``image_size`` and send **uint8**
batches ``(images (B, C, H, W) uint8, labels (B,) int64)``; labels are ``-1`` for unlabelled data.
:meth:`on_after_batch_transfer` turns the images into float in [0, 1] on the training device, where
the views are augmented in batches (e.g. :class:`plugins.data.TwoViewAugment`). Outside Lightning,
call :func:`to_float` on a batch after moving it.

Shuffling comes from :class:`EpochSampler`: the order of epoch ``e`` is a permutation drawn from
``numpy.random.default_rng([seed, e])`` and split across DDP ranks, so a resumed run (Lightning calls
``set_epoch``) sees the same batches, and Lightning keeps it (it is a ``DistributedSampler``).

Memory: the main process holds the records (a path string or a (file, row) pair and an int64 label
per image) and at most ``num_workers * prefetch_factor`` batches in flight; each worker holds the image
it decodes. CIFAR-10 is the exception the format forces: a batch file is one pickle of 10,000 images
(30 MB), so each worker unpickles a batch file the first time it needs an image from it and keeps
its own copy; with shuffling every worker soon holds all the batch files it reads (about 150 MB per
worker for the 50,000 training images). Setup unpickles each file once in the main process to read
the labels and keeps only the labels. With ``num_workers=0`` the main process keeps the copies.

Small sets that fit in memory (scikit-learn digits, an :class:`~plugins.data.ImageTensorDataset`)
use :class:`TensorImageDataModule`, which has the same loaders, batches, sampler and hooks.
"""

from __future__ import annotations

import csv
import math
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, default_collate

from plugins.data.loaders import (
    IMAGE_SUFFIXES,
    ImageTensorDataset,
    cifar10_batch_files,
    load_cifar_pickle,
    load_digits,
    stratified_split,
)
from plugins.errors import UserInputError

__all__ = [
    "split_batch",
    "EpochSampler",
    "ImageRecords",
    "StreamImageDataModule",
    "StreamImageDataset",
    "TensorImageDataModule",
    "cifar10_records",
    "csv_records",
    "default_num_workers",
    "image_folder_records",
    "read_image",
    "to_float",
]


def default_num_workers() -> int:
    """``min(4, number of CPUs this process may use)``."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    return max(1, min(4, n))


# ----------------------------------------------------------------------------- records
@dataclass
class ImageRecords:
    """What to read, not the pixels: ``items[i]`` is a path (str) or a ``(cifar_file, row)`` pair.

    ``labels`` is int64 with ``-1`` for unlabelled items; ``classes`` names the label values.
    """

    items: list
    labels: np.ndarray
    classes: list[str]
    source: str = ""

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if len(self.items) != len(self.labels):
            raise UserInputError(
                f"{self.source or 'records'}: {len(self.items)} images but {len(self.labels)} labels."
            )

    def __len__(self) -> int:
        return len(self.items)

    @property
    def labelled(self) -> bool:
        return len(self.labels) > 0 and bool((self.labels >= 0).all())

    def subset(self, index: Sequence[int] | np.ndarray) -> ImageRecords:
        index = np.asarray(index, dtype=np.int64)
        return ImageRecords(
            [self.items[i] for i in index], self.labels[index], self.classes, self.source
        )


def image_folder_records(root: str | Path) -> ImageRecords:
    """ImageFolder layout: one sub-folder per class (sorted names, hidden folders ignored), images
    with a suffix in ``IMAGE_SUFFIXES`` anywhere below it (sorted paths)."""
    root = Path(root)
    if not root.is_dir():
        raise UserInputError(f"image folder {root} does not exist or is not a folder.")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UserInputError(
            f"image folder {root} has no class sub-folders (expected root/<class>/<image>)."
        )
    items: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        for dirpath, dirnames, filenames in os.walk(root / name):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for f in sorted(filenames):
                if Path(f).suffix.lower() in IMAGE_SUFFIXES and not f.startswith("."):
                    items.append(os.path.join(dirpath, f))
                    labels.append(label)
    if not items:
        raise UserInputError(
            f"image folder {root} has no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in its class folders."
        )
    return ImageRecords(items, np.asarray(labels), classes, str(root))


def csv_records(path: str | Path, check_files: bool = True) -> ImageRecords:
    """A CSV with a ``path`` column and an optional ``label`` column.

    Relative paths are resolved against the CSV's folder. Labels that are all integers are kept as
    they are (classes ``"0".."max"``); other labels are class names (sorted) mapped to 0..K-1. Without
    a ``label`` column every label is ``-1``. ``check_files`` refuses a CSV naming missing files.
    """
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"CSV file {path} does not exist.")
    base = path.resolve().parent
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            fields = [f.strip() for f in (reader.fieldnames or [])]
            if "path" not in fields:
                raise UserInputError(
                    f"CSV file {path} has no 'path' column (columns: {', '.join(fields) or 'none'})."
                )
            reader.fieldnames = fields
            rows = [(r["path"], r.get("label")) for r in reader]
    except (UnicodeDecodeError, csv.Error) as e:
        raise UserInputError(f"CSV file {path} cannot be parsed ({e}).") from None
    if not rows:
        raise UserInputError(f"CSV file {path} lists no images.")
    items = []
    for p, _ in rows:
        p = (p or "").strip()
        items.append(p if os.path.isabs(p) else os.path.join(base, p))
    for i, (p, _) in enumerate(rows):
        if not (p or "").strip():
            raise UserInputError(f"CSV file {path} row {i + 2} has an empty path.")
    if check_files:
        missing = [p for p in items if not os.path.isfile(p)]
        if missing:
            raise UserInputError(
                f"CSV file {path} names {len(missing)} missing image file(s), the first being {missing[0]}."
            )
    if "label" not in fields:
        return ImageRecords(items, np.full(len(items), -1), [], str(path))
    raw = [(lab or "").strip() for _, lab in rows]
    empty = [i for i, lab in enumerate(raw) if not lab]
    if empty:
        raise UserInputError(f"CSV file {path} row {empty[0] + 2} has an empty label.")
    try:
        ints = [int(v) for v in raw]
    except ValueError:
        ints = None
    if ints is not None and min(ints) >= 0:
        classes = [str(i) for i in range(max(ints) + 1)]
        return ImageRecords(items, np.asarray(ints), classes, str(path))
    classes = sorted(set(raw))
    lookup = {c: i for i, c in enumerate(classes)}
    return ImageRecords(items, np.asarray([lookup[v] for v in raw]), classes, str(path))


def _read_cifar_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images (N, 3, 32, 32) uint8, labels (N,) int64)`` of one CIFAR python batch file."""
    d = load_cifar_pickle(Path(path))
    try:
        x = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        y = np.asarray(d[b"labels"], dtype=np.int64).reshape(-1)
    except (KeyError, ValueError, TypeError) as e:
        raise UserInputError(
            f"CIFAR-10 file {path} is not a CIFAR-10 python batch ({type(e).__name__}: {e})."
        ) from None
    if len(x) != len(y):
        raise UserInputError(f"CIFAR-10 file {path} holds {len(x)} images but {len(y)} labels.")
    return x, y


def cifar10_records(root: str | Path | None = None, train: bool = True) -> ImageRecords:
    """CIFAR-10 python batches (the ``cifar-10-batches-py`` folder or its parent; default: the
    shared data set): ``data_batch_*`` when ``train`` else ``test_batch``. Each file is unpickled
    once here for its labels; only the labels are kept."""
    files = cifar10_batch_files(root, train)
    root = files[0].parent  # the cifar-10-batches-py folder
    items: list[tuple[str, int]] = []
    labels = []
    for f in files:
        _, y = _read_cifar_batch(str(f))
        items.extend((str(f), r) for r in range(len(y)))
        labels.append(y)
    classes = [str(i) for i in range(10)]
    meta = root / "batches.meta"
    if meta.is_file():
        names = load_cifar_pickle(meta).get(b"label_names")
        if names:
            classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return ImageRecords(items, np.concatenate(labels), classes, str(root))


# ----------------------------------------------------------------------------- decoding
_MODES = {1: "L", 3: "RGB"}


def read_image(path: str | Path, size: int, channels: int = 3) -> np.ndarray:
    """Decode one file to ``(channels, size, size)`` uint8 (PIL bilinear resize, antialiased).

    JPEGs are decoded at the smallest DCT scale still at least ``size`` (``Image.draft``), which is
    what makes reading large photos for small inputs fast. Raises PIL's ``OSError`` etc. as is.
    """
    from PIL import Image

    mode = _MODES[channels]
    with Image.open(path) as im:
        if im.format == "JPEG":
            im.draft(mode, (size, size))
        im = im.convert(mode)
        if im.size != (size, size):
            im = im.resize((size, size), Image.BILINEAR)
        a = np.asarray(im, dtype=np.uint8)
    return a[None] if a.ndim == 2 else np.ascontiguousarray(a.transpose(2, 0, 1))


def _resize_array(a: np.ndarray, size: int, channels: int) -> np.ndarray:
    """(3, H, W) uint8 to (channels, size, size) uint8 through PIL, like :func:`read_image`."""
    if a.shape[1:] == (size, size) and channels == 3:
        return a
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(a.transpose(1, 2, 0))).convert(_MODES[channels])
    if im.size != (size, size):
        im = im.resize((size, size), Image.BILINEAR)
    out = np.asarray(im, dtype=np.uint8)
    return out[None] if out.ndim == 2 else np.ascontiguousarray(out.transpose(2, 0, 1))


_UNREADABLE = (OSError, SyntaxError, ValueError, EOFError)


class StreamImageDataset(Dataset):
    """Decodes ``records.items[i]`` when asked: ``(uint8 (C, size, size), label, None)``, or
    ``(None, label, (i, reason))`` when the file cannot be read, so that the main process (see
    :class:`StreamImageDataModule`) refuses or skips it with one sentence instead of a worker traceback.
    """

    def __init__(
        self,
        records: ImageRecords,
        image_size: int = 32,
        channels: int = 3,
        skip_unreadable: bool = False,
    ) -> None:
        if channels not in _MODES:
            raise UserInputError(f"channels must be 1 or 3, got {channels}.")
        if int(image_size) < 1:
            raise UserInputError(f"image_size must be a positive integer, got {image_size}.")
        self.records = records
        self.image_size = int(image_size)
        self.channels = channels
        self.skip_unreadable = skip_unreadable
        self._cifar: dict[str, np.ndarray] = {}  # this process's copies of CIFAR batch files
        self.unreadable: dict[int, str] = {}  # filled in the main process by the loader

    def __len__(self) -> int:
        return len(self.records)

    def name(self, i: int) -> str:
        item = self.records.items[i]
        return f"{item[0]} (row {item[1]})" if isinstance(item, tuple) else str(item)

    def __getitem__(self, i: int):
        item = self.records.items[i]
        label = int(self.records.labels[i])
        try:
            if isinstance(item, tuple):
                f, row = item
                if f not in self._cifar:
                    self._cifar[f] = _read_cifar_batch(f)[0]
                a = _resize_array(self._cifar[f][row], self.image_size, self.channels)
            else:
                a = read_image(item, self.image_size, self.channels)
        except UserInputError as e:
            return None, label, (int(i), str(e).rstrip("."))
        except _UNREADABLE as e:  # UnidentifiedImageError, "image file is truncated": OSErrors
            return None, label, (int(i), str(e).rstrip(".") or type(e).__name__)
        except Exception as e:  # noqa: BLE001 - PIL raises DecompressionBombError and others
            return None, label, (int(i), f"{type(e).__name__}: {e}".rstrip("."))
        return torch.from_numpy(a), label, None


def _collate(samples: list) -> tuple[torch.Tensor | None, torch.Tensor, list]:
    """Stack the readable images (in shared memory inside a worker) and list the unreadable ones."""
    good = [(x, y) for x, y, bad in samples if bad is None]
    bad = [b for _, _, b in samples if b is not None]
    if not good:
        return None, torch.empty(0, dtype=torch.long), bad
    images = default_collate([x for x, _ in good])
    return images, torch.tensor([y for _, y in good], dtype=torch.long), bad


class _CheckedLoader(DataLoader):
    """A DataLoader whose batches are ``(images, labels)``; it refuses or skips (and counts) the
    unreadable images that workers report, in the main process."""

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        ds = self.dataset
        skip = getattr(ds, "skip_unreadable", False)
        for images, labels, bad in super().__iter__():
            for i, reason in bad:
                if not skip:
                    raise UserInputError(
                        f"cannot read image {ds.name(i)} (truncated or not an image: {reason}); "
                        "remove or replace the file, or pass skip_unreadable=True to skip and count it."
                    )
                if i not in ds.unreadable:
                    ds.unreadable[i] = reason
                    warnings.warn(
                        f"skipped unreadable image {ds.name(i)} ({reason}).",
                        UserWarning,
                        stacklevel=2,
                    )
            if images is not None:
                yield images, labels


# ----------------------------------------------------------------------------- sampler
class EpochSampler(DistributedSampler):
    """Indices of one epoch, a function of ``(seed, epoch)`` only, split across ``num_replicas`` ranks.

    With ``shuffle`` the order is ``numpy.random.default_rng([seed, epoch]).permutation(n)``; every
    rank draws the same order and takes every ``num_replicas``-th index from ``rank`` (padded by
    wrapping around so every rank gets as many, like ``DistributedSampler``). It subclasses
    ``DistributedSampler`` so that Lightning calls :meth:`set_epoch` and does not replace it.

    ``position`` (called when an epoch's iteration starts; set by :func:`plugins.engine.fit`) gives
    the trainer's ``(epoch, batches done)``, which override :meth:`set_epoch`'s epoch: a run
    resumed in the middle of an epoch continues where it stopped. ``batch_size`` (this rank's)
    turns batches into samples.
    """

    def __init__(
        self,
        length: int,
        seed: int = 0,
        shuffle: bool = True,
        num_replicas: int = 1,
        rank: int = 0,
        position: Callable[[], tuple[int, int]] | None = None,
    ) -> None:
        if not 0 <= rank < num_replicas:
            raise UserInputError(f"rank {rank} is outside 0..{num_replicas - 1}.")
        # no super().__init__: it would need a dataset and an initialised process group
        self.length = int(length)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.epoch = 0
        self.drop_last = False
        self.num_samples = math.ceil(self.length / self.num_replicas) if self.length else 0
        self.total_size = self.num_samples * self.num_replicas
        self.position = position
        self.batch_size = 1

    def order(self, epoch: int | None = None) -> np.ndarray:
        """The whole epoch's order (all ranks), before the split."""
        epoch = self.epoch if epoch is None else epoch
        if self.shuffle:
            return np.random.default_rng([self.seed, int(epoch)]).permutation(self.length)
        return np.arange(self.length)

    def __iter__(self) -> Iterator[int]:
        # a generator: Lightning creates the first epoch's iterator before it restores a
        # checkpoint's steps, and draws from it only after
        done = 0
        if self.position is not None:  # a resumable fit: the trainer's epoch and batches done
            self.epoch, batches = self.position()
            done = batches * self.batch_size
        idx = self.order()
        if self.total_size > len(idx) and len(idx):
            idx = np.resize(idx, self.total_size)  # repeats from the start
        mine = idx[self.rank : self.total_size : self.num_replicas]
        yield from mine[done:].tolist()

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)


def _world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


# ----------------------------------------------------------------------------- data modules
def to_float(batch):
    """``(uint8 images, labels)`` -> ``(float images in [0, 1], labels)``; float images pass."""
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        x = batch[0]
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        return (x, *batch[1:])
    return batch


def _split_indices(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train/val indices: class-stratified when every item has a label and every class has two,
    otherwise a seeded random split."""
    n = len(labels)
    n_val = math.ceil(n * fraction)  # as scikit-learn's train_test_split rounds
    if n_val < 1 or n_val >= n:
        raise UserInputError(
            f"val_fraction {fraction} leaves {n_val} of {n} images for validation; "
            "choose a fraction that leaves at least one image on each side."
        )
    if len(labels) and (labels >= 0).all():
        counts = np.bincount(labels)
        if (
            (counts[counts > 0] >= 2).all()
            and n_val >= (counts > 0).sum()
            and n - n_val >= (counts > 0).sum()
        ):
            tr, va = stratified_split(torch.from_numpy(labels), test_fraction=fraction, seed=seed)
            return np.sort(tr), np.sort(va)
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


class _ImageDataModule(pl.LightningDataModule):
    """Loaders, sampler and the uint8 -> float hook shared by the streamed and in-memory modules."""

    train_dataset: Dataset | None
    val_dataset: Dataset | None

    def __init__(
        self,
        batch_size: int,
        num_workers: int,
        seed: int,
        shuffle: bool,
        drop_last: bool,
        pin_memory: bool | None,
    ) -> None:
        super().__init__()
        if int(batch_size) < 1:
            raise UserInputError(f"batch_size must be a positive integer, got {batch_size}.")
        if int(num_workers) < 0:
            raise UserInputError(f"num_workers must be 0 or more, got {num_workers}.")
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.train_dataset = None
        self.val_dataset = None
        self.classes: list[str] = []
        #: set by :func:`plugins.engine.fit`: the trainer's (epoch, batches done in it)
        self.resume_position: Callable[[], tuple[int, int]] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _loader(self, ds: Dataset, train: bool) -> DataLoader:
        world, rank = _world()
        position = (lambda: self.resume_position()) if train and self.resume_position else None
        sampler = EpochSampler(len(ds), self.seed, self.shuffle and train, world, rank, position)
        sampler.batch_size = self.batch_size
        cls = _CheckedLoader if isinstance(ds, StreamImageDataset) else DataLoader
        return cls(
            ds,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=_collate if cls is _CheckedLoader else None,
            pin_memory=self.pin_memory,
            drop_last=self.drop_last and train,
            persistent_workers=False,
        )

    def _ready(self) -> None:
        if self.train_dataset is None:
            self.setup("fit")

    def train_dataloader(self) -> DataLoader:
        self._ready()
        world, _ = _world()
        per_rank = math.ceil(len(self.train_dataset) / world)
        if self.drop_last and per_rank < self.batch_size:
            # with drop_last such an epoch has no batch at all: training would end at once
            raise UserInputError(
                f"the training set has {len(self.train_dataset)} images, "
                f"{'' if world == 1 else f'{per_rank} per process, '}fewer than one batch of "
                f"{self.batch_size}; lower batch_size or pass drop_last=False."
            )
        return self._loader(self.train_dataset, train=True)

    def val_dataloader(self) -> DataLoader | list:
        self._ready()
        return [] if self.val_dataset is None else self._loader(self.val_dataset, train=False)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        return to_float(batch)


class StreamImageDataModule(_ImageDataModule):
    """Images on disk, decoded and resized in ``num_workers`` worker processes, batched as uint8.

    Args:
        train: an :class:`ImageRecords`, an ImageFolder root, a ``.csv`` file, ``"cifar10"`` (the
            shared training batches) or a CIFAR-10 batches folder.
        val: the same kinds for a separate validation set (for ``"cifar10"``: the test batch is
            ``cifar10_records(train=False)``); ``None`` splits ``train`` by ``val_fraction``
            (class-stratified when labelled, seeded by ``split_seed``); ``val_fraction=0`` means no
            validation set.
        image_size: side of the square images the workers produce (PIL bilinear resize).
        channels: 3 (RGB) or 1 (grayscale).
        num_workers: decoding processes, default ``min(4, cpu count)``.
        seed: shuffling seed; the order of epoch ``e`` depends only on ``(seed, e)``.
        skip_unreadable: ``False`` (default) refuses a truncated or unreadable image with one
            :class:`~plugins.errors.UserInputError` sentence naming the file, when it is first read;
            ``True`` drops it from its batch, warns once and counts it (:attr:`skipped`,
            :attr:`skipped_files`), so such a batch is smaller.

    Batches are ``(images uint8 (B, C, image_size, image_size), labels int64 (B,))``;
    :meth:`on_after_batch_transfer` makes the images float in [0, 1] on the device.
    """

    def __init__(
        self,
        train: ImageRecords | str | Path,
        val: ImageRecords | str | Path | None = None,
        *,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        image_size: int = 32,
        channels: int = 3,
        batch_size: int = 256,
        num_workers: int | None = None,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        skip_unreadable: bool = False,
        pin_memory: bool | None = None,
    ) -> None:
        super().__init__(
            batch_size,
            default_num_workers() if num_workers is None else num_workers,
            seed,
            shuffle,
            drop_last,
            pin_memory,
        )
        if not 0.0 <= float(val_fraction) < 1.0:
            raise UserInputError(f"val_fraction must be in [0, 1), got {val_fraction}.")
        self.train_source = train
        self.val_source = val
        self.val_fraction = float(val_fraction)
        self.split_seed = int(split_seed)
        self.image_size = int(image_size)
        self.channels = int(channels)
        self.skip_unreadable = skip_unreadable

    @staticmethod
    def records(source: ImageRecords | str | Path, train: bool = True) -> ImageRecords:
        """Records of a source given as records, ``"cifar10"``, a ``.csv`` file or a folder."""
        if isinstance(source, ImageRecords):
            return source
        if str(source) == "cifar10":
            return cifar10_records(train=train)
        path = Path(source)
        if path.suffix.lower() == ".csv":
            return csv_records(path)
        if not path.exists():
            raise UserInputError(f"data path {path} does not exist.")
        if path.is_file():
            raise UserInputError(
                f"data path {path} is a file; expected an ImageFolder root, a .csv file or a CIFAR-10 folder."
            )
        if (
            (path / "cifar-10-batches-py").is_dir()
            or any(path.glob("data_batch_*"))
            or (path / "test_batch").is_file()
        ):
            return cifar10_records(path, train=train)
        return image_folder_records(path)

    def _dataset(self, records: ImageRecords) -> StreamImageDataset:
        return StreamImageDataset(records, self.image_size, self.channels, self.skip_unreadable)

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        rec = self.records(self.train_source, train=True)
        self.classes = list(rec.classes)
        if self.val_source is not None:
            val = self.records(self.val_source, train=False)
        elif self.val_fraction > 0:
            tr, va = _split_indices(rec.labels, self.val_fraction, self.split_seed)
            rec, val = rec.subset(tr), rec.subset(va)
        else:
            val = None
        self.train_dataset = self._dataset(rec)
        self.val_dataset = None if val is None else self._dataset(val)

    @property
    def skipped(self) -> int:
        """How many unreadable images were skipped so far (train and val)."""
        return len(self.skipped_files)

    @property
    def skipped_files(self) -> list[str]:
        out = []
        for ds in (self.train_dataset, self.val_dataset):
            if ds is not None:
                out.extend(ds.name(i) for i in sorted(ds.unreadable))
        return out


class IndexedDataset(Dataset):
    """``dataset[i]`` as ``(image, label, i)`` (label -1 when the item has none), or a dict item with
    ``"index": i`` added: the batches :class:`HCSCTask` trains on."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> Any:
        item = self.dataset[i]
        if isinstance(item, Mapping):
            return {**item, "index": i}
        if isinstance(item, (tuple, list)):
            return (item[0], item[1] if len(item) > 1 else -1, i)
        return (item, -1, i)


class TensorImageDataModule(_ImageDataModule):
    """A small in-memory set behind the streamed interface (same sampler, batches and hook).

    Args:
        dataset: an :class:`~plugins.data.ImageTensorDataset` (float in [0, 1]); default: the
            scikit-learn digits via :func:`plugins.data.load_digits` at ``image_size``.
        val: a separate validation set, or ``None`` to split by ``val_fraction`` (stratified).
        num_workers: default 0 (the tensors are already decoded).

    Batches are ``(float images (B, C, H, W) in [0, 1], labels (B,))``; with ``return_index``
    the training batches also carry each image's index in the training set (``HCSCTask``).
    """

    def __init__(
        self,
        dataset: ImageTensorDataset | None = None,
        val: ImageTensorDataset | None = None,
        *,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        image_size: int | None = None,
        batch_size: int = 256,
        num_workers: int = 0,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        pin_memory: bool | None = None,
        return_index: bool = False,
    ) -> None:
        super().__init__(batch_size, num_workers, seed, shuffle, drop_last, pin_memory)
        if not 0.0 <= float(val_fraction) < 1.0:
            raise UserInputError(f"val_fraction must be in [0, 1), got {val_fraction}.")
        self.return_index = return_index
        self.dataset = dataset
        self.val = val
        self.val_fraction = float(val_fraction)
        self.split_seed = int(split_seed)
        self.image_size = image_size
        self.skipped = 0
        self.skipped_files: list[str] = []

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        ds = self.dataset if self.dataset is not None else load_digits(size=self.image_size)
        self.classes = list(ds.classes)
        if self.val is not None:
            self.train_dataset, self.val_dataset = ds, self.val
        elif self.val_fraction > 0:
            tr, va = _split_indices(ds.labels.numpy(), self.val_fraction, self.split_seed)
            self.train_dataset, self.val_dataset = ds.subset(tr), ds.subset(va)
        else:
            self.train_dataset, self.val_dataset = ds, None
        if self.return_index:  # (image, label, index) batches, e.g. for HCSCTask's prototypes
            self.train_dataset = IndexedDataset(self.train_dataset)


def split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(images, labels or None)`` of a batch: a tensor, a mapping (``image`` / ``label`` or
    ``labels``, else its first value) or a tuple / list (images first), as the Lightning tasks
    accept from this module and from users' own loaders."""
    if isinstance(batch, Mapping):
        images = batch["image"] if "image" in batch else next(iter(batch.values()))
        return images, batch.get("label", batch.get("labels"))
    if isinstance(batch, list | tuple):
        return batch[0], (batch[1] if len(batch) > 1 else None)
    return batch, None
