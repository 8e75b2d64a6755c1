"""Projection / prediction heads, EMA momentum update and a fixed-size feature queue."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from plugins import distributed as D


class ProjectionHead(nn.Module):
    """MLP head: ``num_layers`` linear layers, BatchNorm (optional) + ReLU between them.

    Args:
        input_dim: input features.
        hidden_dim: width of hidden layers.
        output_dim: output features.
        num_layers: number of linear layers (>= 1; 1 is a linear projector).
        batch_norm: BatchNorm1d after each hidden linear layer (SimCLR v2 / MoCo v3 style).
        last_batch_norm: BatchNorm1d (no affine) on the output.
        bias: bias in the linear layers (disabled automatically before a BatchNorm).

    Examples:
        >>> head = ProjectionHead(512, 512, 128)  # SimCLR: Linear-ReLU-Linear
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        output_dim: int,
        num_layers: int = 2,
        batch_norm: bool = False,
        last_batch_norm: bool = False,
        bias: bool = True,
    ):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        layers: list[nn.Module] = []
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        for i in range(num_layers):
            last = i == num_layers - 1
            layers.append(
                nn.Linear(dims[i], dims[i + 1], bias=bias and not (batch_norm and not last))
            )
            if not last:
                if batch_norm:
                    layers.append(nn.BatchNorm1d(dims[i + 1]))
                layers.append(nn.ReLU(inplace=True))
        if last_batch_norm:
            layers.append(nn.BatchNorm1d(output_dim, affine=False))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def momentum_copy(module: nn.Module) -> nn.Module:
    """A frozen deep copy to serve as the EMA (key / teacher) network."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def momentum_update(online: nn.Module, target: nn.Module, m: float) -> None:
    """EMA update ``target = m * target + (1 - m) * online`` for parameters; buffers are copied.

    (He et al., MoCo, CVPR 2020, eq. 2.)
    """
    t_params = list(target.parameters())
    o_params = list(online.parameters())
    torch._foreach_mul_(t_params, m)
    torch._foreach_add_(t_params, o_params, alpha=1 - m)
    for bt, bo in zip(target.buffers(), online.buffers()):
        bt.copy_(bo)


class FeatureQueue(nn.Module):
    """Fixed-size FIFO of L2-normalised keys (MoCo's dictionary).

    ``enqueue(keys)`` gathers keys from every rank first, so all ranks hold the same queue. Also stores
    an integer tag per slot (e.g. dataset index) for methods that need to know what each key is.

    Args:
        size: number of slots K.
        dim: feature dimension.
    """

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.size = size
        self.register_buffer("features", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("tags", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor, tags: torch.Tensor | None = None) -> torch.Tensor:
        """Insert ``keys`` (N, dim) (gathered over ranks); returns the slot indices written."""
        keys = D.gather_no_grad(keys.detach())
        if tags is None:
            tags = torch.full(
                (keys.shape[0] // D.world_size(),), -1, dtype=torch.long, device=keys.device
            )
        tags = D.gather_no_grad(tags.to(keys.device))
        n = keys.shape[0]
        if n > self.size:
            keys, tags, n = keys[-self.size :], tags[-self.size :], self.size
        slots = (self.ptr + torch.arange(n, device=keys.device)) % self.size
        self.features[slots] = F.normalize(keys.to(self.features.dtype), dim=1)
        self.tags[slots] = tags
        self.ptr.copy_((self.ptr + n) % self.size)
        self.filled.copy_(torch.clamp(self.filled + n, max=self.size))
        return slots

    def forward(self) -> torch.Tensor:
        return self.features
