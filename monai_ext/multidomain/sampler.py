"""Domain-balanced batches: every batch holds the same number of samples of every domain.

Boutillon et al. (MICCAI 2021, Sec. 2.4) draw each mini-batch from all data sets so that the shared
filters, every DSBN slot and the contrastive regulariser see every domain at each step; small
domains are therefore oversampled (cycled through fresh permutations).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from plugins.errors import UserInputError

__all__ = ["DomainBalancedBatchSampler"]


class DomainBalancedBatchSampler(Sampler[list[int]]):
    """Yield lists of dataset indices with ``samples_per_domain`` samples of each domain.

    Args:
        domains: domain id of every dataset item, e.g. ``[d["domain"] for d in datalist]``.
        samples_per_domain: samples of each domain per batch (batch size = K * this).
        num_batches: batches per epoch; default: enough for the largest domain to be seen once.
        num_domains: K; default ``max(domains) + 1``. Every domain must have at least one item.
        seed: base seed; the epoch (``set_epoch``) is added so that DDP ranks can agree.
        rank, world_size: split every batch's draws between DDP ranks (each rank gets the batches
            whose index is ``rank`` modulo ``world_size``).
    """

    def __init__(
        self,
        domains: Sequence[int],
        samples_per_domain: int = 4,
        num_batches: int | None = None,
        num_domains: int | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.domains = np.asarray([int(d) for d in domains])
        if self.domains.size == 0:
            raise UserInputError("the datalist is empty: expected at least one item per domain.")
        k = int(self.domains.max()) + 1 if num_domains is None else int(num_domains)
        if self.domains.min() < 0 or self.domains.max() >= k:
            bad = int(self.domains.min()) if self.domains.min() < 0 else int(self.domains.max())
            raise UserInputError(
                f"domain id {bad} is out of range: expected an integer in [0, {k - 1}]."
            )
        self.pools = [np.flatnonzero(self.domains == d) for d in range(k)]
        empty = [d for d, p in enumerate(self.pools) if p.size == 0]
        if empty:
            raise UserInputError(
                f"domain id {empty[0]} has no items in the datalist: every domain needs at least one."
            )
        if samples_per_domain < 1:
            raise ValueError(f"samples_per_domain must be >= 1, got {samples_per_domain}")
        self.samples_per_domain = samples_per_domain
        largest = max(p.size for p in self.pools)
        self.num_batches = num_batches or max(1, -(-largest // samples_per_domain))
        self.seed, self.epoch, self.rank, self.world_size = seed, 0, rank, world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(range(self.rank, self.num_batches, self.world_size))

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng(self.seed + self.epoch)
        self.epoch += 1  # a fresh order next time even when nobody calls set_epoch
        need = self.num_batches * self.samples_per_domain
        streams = []
        for pool in self.pools:
            reps = -(-need // pool.size)
            streams.append(np.concatenate([rng.permutation(pool) for _ in range(reps)])[:need])
        per_batch = np.stack(streams, 1).reshape(
            self.num_batches, self.samples_per_domain * len(self.pools)
        )
        for b in range(self.rank, self.num_batches, self.world_size):
            yield per_batch[b].tolist()
