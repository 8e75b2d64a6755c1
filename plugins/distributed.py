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


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward sums the gradient over ranks and keeps this rank's rows.

    Written here rather than using ``torch.distributed.nn.functional.all_gather``: on gloo that one
    emulates reduce-scatter with an all-to-all that silently mixes up non-contiguous gradients (e.g.
    after a transpose of the gathered tensor), which gave wrong ``sup_con`` gradients.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        x = x.contiguous()
        ctx.n = x.shape[0]
        out = [torch.empty_like(x) for _ in range(world_size())]
        dist.all_gather(out, x)
        return torch.cat(out, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        if dist.get_backend() in ("nccl", "xccl"):
            local = torch.empty((ctx.n, *grad.shape[1:]), dtype=grad.dtype, device=grad.device)
            dist.reduce_scatter_tensor(local, grad, op=dist.ReduceOp.SUM)
            return local
        # gloo/mpi: all-reduce a copy (never the incoming gradient in place), keep our rows
        total = grad.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        start = rank() * ctx.n
        return total[start : start + ctx.n]


def gather(x: torch.Tensor) -> torch.Tensor:
    """All-gather ``x`` (N, ...) from every rank along dim 0, with gradient.

    Backward sums the gradient of the gathered tensor over ranks and returns this rank's rows.
    Returns ``x`` itself when not distributed. All ranks must pass the same shape.
    """
    if not is_distributed():
        return x
    return _GatherWithGrad.apply(x)


@torch.no_grad()
def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gather without gradient (queues, cluster assignments, labels)."""
    if not is_distributed():
        return x
    out = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, dim=0)


@torch.no_grad()
def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` over ranks, without gradient (counts, normalisers); ``x`` itself when not distributed."""
    if not is_distributed():
        return x
    total = x.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def local_slice(n_local: int) -> slice:
    """Rows of the gathered tensor that belong to this rank."""
    start = rank() * n_local
    return slice(start, start + n_local)
