"""Batches for :class:`agri_ext.task.CLAWSTask`: the batches of :func:`agri_ext.train.train_claws`
(mixed random batches, or class-homogeneous ones for ``within_class="batch"``), sharded over DDP ranks
so that each *global* batch is the one a single process would draw.

Under DDP every rank takes a contiguous ``1/world`` slice of the same global batch, so a
class-homogeneous batch stays homogeneous over all ranks (the gathered plain NT-Xent of
``within_class="batch"`` then only ever contrasts one class), and the batches depend only on
``(seed, epoch)``: a resumed run draws the same ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from agri_ext.config import CLAWSConfig
from agri_ext.sampling import class_homogeneous_batches, random_batches
from plugins import distributed as D
from plugins.data import ImageTensorDataset

__all__ = ["CLAWSBatchSampler", "CLAWSDataModule", "MaskedImageDataset"]


class CLAWSBatchSampler(DistributedSampler):
    """Yields one index tensor per step: this rank's slice of :func:`random_batches` or
    :func:`class_homogeneous_batches` (``homogeneous``).

    Epoch ``e`` draws from a generator seeded with ``seed`` after ``e`` earlier epochs' draws, so on
    one process the batches are exactly those of ``train_claws(seed=seed)``, epoch after epoch,
    while depending only on ``(seed, epoch)`` (Lightning calls :meth:`set_epoch`). With ``world``
    ranks each global batch is cut to a multiple of ``world`` (at most ``world - 1`` samples dropped)
    and rank ``r`` takes its ``r``-th contiguous part; batches smaller than ``world`` are skipped.
    All ranks therefore pass equal shapes to the all-gathers of the loss and of BatchNorm.

    It is a :class:`DistributedSampler` so that Lightning (``use_distributed_sampler=True``, the
    default) keeps it instead of wrapping it; use it with ``DataLoader(batch_size=None)``.

    Args:
        labels: (N,) weak labels.
        batch_size: the global batch size (the paper's 128 summed over ranks).
        homogeneous: class-homogeneous batches (CLAWS ``contrast="within"``, ``within_class="batch"``).
        seed: the shuffling seed (``train_claws``'s ``seed``).
        num_replicas, rank: default: the process group's (1 and 0 without one).
    """

    def __init__(
        self,
        labels: torch.Tensor,
        batch_size: int,
        homogeneous: bool = False,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ):
        labels = labels.reshape(-1).cpu()
        num_replicas = D.world_size() if num_replicas is None else num_replicas
        rank = D.rank() if rank is None else rank
        super().__init__(range(len(labels)), num_replicas, rank, shuffle=True, seed=seed)
        self.labels = labels
        self.batch_size = batch_size
        self.homogeneous = homogeneous
        self._cache: tuple[int, list[torch.Tensor]] | None = None  # (epoch, this rank's batches)
        #: the trainer's (epoch, batches done in it), read when an epoch's iteration starts
        #: (:func:`plugins.engine.position`); overrides the epoch of :meth:`set_epoch`
        self.position: Callable[[], tuple[int, int]] | None = None

    def global_batches(self, epoch: int | None = None) -> list[torch.Tensor]:
        """The epoch's batches over all ranks, before sharding (``train_claws``'s for one rank)."""
        epoch = self.epoch if epoch is None else epoch
        g = torch.Generator().manual_seed(self.seed)
        for _ in range(epoch + 1):  # replay earlier epochs' draws: train_claws keeps one generator
            if self.homogeneous:
                batches = class_homogeneous_batches(self.labels, self.batch_size, g)
            else:
                batches = random_batches(len(self.labels), self.batch_size, g)
        return batches

    def _shards(self) -> list[torch.Tensor]:
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        world, out = self.num_replicas, []
        for b in self.global_batches():
            k = len(b) // world
            if k:
                out.append(b[: k * world].view(world, k)[self.rank])
        self._cache = (self.epoch, out)
        return out

    def __iter__(self) -> Iterator[torch.Tensor]:
        # a generator: Lightning creates the first epoch's iterator before it restores a
        # checkpoint's steps, and draws from it only after
        start = 0
        if self.position is not None:  # a resumable fit: the trainer's epoch and batches done
            self.epoch, start = self.position()
        yield from self._shards()[start:]

    def __len__(self) -> int:
        return len(self._shards())


class MaskedImageDataset(Dataset):
    """Images, labels and stored hard masks, indexed by a whole batch of indices at once."""

    def __init__(self, dataset: ImageTensorDataset, masks: torch.Tensor):
        if masks.shape[0] != len(dataset):
            raise ValueError(f"{masks.shape[0]} masks for {len(dataset)} images")
        self.dataset, self.masks = dataset, masks

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.dataset.images[idx], self.dataset.labels[idx], self.masks[idx]


class CLAWSDataModule(LightningDataModule):
    """An in-memory :class:`ImageTensorDataset` (weak labels) served in :class:`CLAWSBatchSampler`
    batches ``(images, labels)`` or, with stored ``masks``, ``(images, labels, masks)``.

    Args:
        dataset: images (N, C, H, W) in [0, 1] with weak labels, or a data name or path that
            :func:`agri_ext.data.load_claws_data` reads (its training split; ``"crops"``: the
            shared Plant Seedlings), as a YAML config gives it.
        image_size: side the named data set is resized to (ignored for a dataset object).
        batch_size: the global batch size.
        homogeneous: class-homogeneous batches; :meth:`for_config` sets it from a config.
        seed: shuffling seed.
        masks: optional stored (N, 1, H, W) hard masks; otherwise the task computes them per batch.
        num_workers: DataLoader workers.
    """

    def __init__(
        self,
        dataset: ImageTensorDataset | str | None = None,
        batch_size: int = CLAWSConfig.batch_size,
        homogeneous: bool = False,
        seed: int = 0,
        masks: torch.Tensor | None = None,
        num_workers: int = 0,
        image_size: int | None = None,
    ):
        super().__init__()
        #: set by :func:`plugins.engine.fit`: the trainer's (epoch, batches done in it)
        self.resume_position: Callable[[], tuple[int, int]] | None = None
        if not isinstance(dataset, ImageTensorDataset):
            from agri_ext.data import load_claws_data

            dataset = load_claws_data(dataset, size=image_size, seed=seed)[0]
        self.dataset, self.masks = dataset, masks
        self.batch_size, self.homogeneous, self.seed = batch_size, homogeneous, seed
        self.num_workers = num_workers

    @classmethod
    def for_config(
        cls, dataset: ImageTensorDataset, config: CLAWSConfig, seed: int = 0, **kwargs
    ) -> CLAWSDataModule:
        """Batch size and homogeneity as ``train_claws`` takes them from ``config``."""
        homogeneous = config.contrast == "within" and config.within_class == "batch"
        return cls(dataset, config.batch_size, homogeneous, seed, **kwargs)

    def train_dataloader(self) -> DataLoader:
        data = self.dataset if self.masks is None else MaskedImageDataset(self.dataset, self.masks)
        sampler = CLAWSBatchSampler(
            self.dataset.labels, self.batch_size, self.homogeneous, self.seed
        )
        if self.resume_position is not None:
            sampler.position = self.resume_position
        # its own generator: the loader's base seed must not draw from the global RNG, which the
        # views use (so the views are train_claws's)
        gen = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            data, batch_size=None, sampler=sampler, num_workers=self.num_workers, generator=gen
        )
