"""Rank helpers and all-gather with gradient.

Everything here works without an initialised process group (world size 1), so losses can call
:func:`gather` unconditionally.

DDP semantics (lightly's lesson, stated once here): :func:`gather` returns the concatenation of every
rank's tensor and its backward *sums* the incoming gradients over ranks (reduce-scatter). A loss that
averages over its **local** anchors, followed by DDP's gradient averaging, therefore yields exactly the
gradient of the single-process loss averaged over all anchors. Tests check this with a 2-process gloo group.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when a process group is initialised with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def gather(x: torch.Tensor) -> torch.Tensor:
    """All-gather ``x`` (N, ...) from every rank along dim 0, with gradient.

    Returns ``x`` itself when not distributed. All ranks must pass the same shape.
    """
    if not is_distributed():
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)


@torch.no_grad()
def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gather without gradient (queues, cluster assignments, labels)."""
    if not is_distributed():
        return x
    out = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, dim=0)


def local_slice(n_local: int) -> slice:
    """Rows of the gathered tensor that belong to this rank."""
    start = rank() * n_local
    return slice(start, start + n_local)
