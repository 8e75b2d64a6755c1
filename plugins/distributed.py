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


class GlobalBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch over all ranks: the
    semantics of :class:`torch.nn.SyncBatchNorm` (SimCLR's "global BN", Chen et al. 2020, §B.9),
    on any device and backend. ``SyncBatchNorm`` refuses CPU tensors, so CPU (gloo) DDP uses this.

    Two all-reduces with gradient (:func:`gather`): the mean, then the biased variance; the running
    variance gets the global unbiased one. Outside training or a process group it is the ordinary
    BatchNorm of its input's dimensionality (1d, 2d or 3d).
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        local = torch.tensor([x.numel() // x.shape[1]], dtype=x.dtype, device=x.device)
        count = gather_no_grad(local).sum()
        mean = gather(x.sum(dims)[None]).sum(0) / count
        xc = x - mean.view(shape)
        var = gather((xc * xc).sum(dims)[None]).sum(0) / count
        y = xc * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 0.1
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * count / (count - 1), alpha=m)
                self.num_batches_tracked.add_(1)
        return y


_PLAIN_BN = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)


def _share_state(bn: torch.nn.Module, old: torch.nn.Module) -> None:
    """``bn`` takes ``old``'s parameters, buffers and mode (the same tensors, not copies), so
    optimisers and checkpoints see one set."""
    if old.affine:
        bn.weight, bn.bias = old.weight, old.bias
    if old.track_running_stats:
        bn.running_mean, bn.running_var = old.running_mean, old.running_var
        bn.num_batches_tracked = old.num_batches_tracked
    bn.train(old.training)


def convert_global_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """Replace every plain ``BatchNorm{1,2,3}d`` in ``module`` by :class:`GlobalBatchNorm` sharing its
    parameters and buffers (as ``SyncBatchNorm.convert_sync_batchnorm`` does); returns ``module``."""
    for name, child in module.named_children():
        if type(child) in _PLAIN_BN:
            bn = GlobalBatchNorm(
                child.num_features,
                child.eps,
                child.momentum,
                child.affine,
                child.track_running_stats,
            )
            _share_state(bn, child)
            bn.plain_type = type(child)
            setattr(module, name, bn)
        else:
            convert_global_batchnorm(child)
    return module


def revert_global_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """Undo :func:`convert_global_batchnorm`: each :class:`GlobalBatchNorm` back to the plain
    BatchNorm it replaced (``BatchNorm2d`` for one built directly)."""
    for name, child in module.named_children():
        if type(child) is GlobalBatchNorm:
            plain = getattr(child, "plain_type", torch.nn.BatchNorm2d)
            bn = plain(
                child.num_features,
                child.eps,
                child.momentum,
                child.affine,
                child.track_running_stats,
            )
            _share_state(bn, child)
            setattr(module, name, bn)
        else:
            revert_global_batchnorm(child)
    return module
