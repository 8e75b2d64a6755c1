"""Batch index samplers: mixed random batches, or class-homogeneous batches (CLAWS
``within_class="batch"``: every batch is drawn from one weak class)."""

from __future__ import annotations

import torch

__all__ = ["random_batches", "class_homogeneous_batches"]


def random_batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """A random permutation of ``range(n)`` cut into batches; a last batch of one sample is dropped
    (BatchNorm and NT-Xent need two)."""
    perm = torch.randperm(n, generator=generator)
    batches = list(perm.split(batch_size))
    return [b for b in batches if len(b) > 1] or batches


def class_homogeneous_batches(
    labels: torch.Tensor, batch_size: int, generator: torch.Generator
) -> list[torch.Tensor]:
    """Each class's samples, shuffled and cut into batches of at most ``batch_size``; the batches of
    all classes are then shuffled together. A class with a single sample gives a batch of one (its
    NT-Xent is 0: the positive is its only column)."""
    labels = labels.reshape(-1).cpu()
    perm = torch.randperm(len(labels), generator=generator)
    order = perm[torch.argsort(labels[perm], stable=True)]  # grouped by class, shuffled inside
    counts = torch.bincount(labels[order]).tolist()
    batches = [
        chunk for group in order.split(counts) if len(group) for chunk in group.split(batch_size)
    ]
    shuffle = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffle]
