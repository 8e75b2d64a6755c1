"""The small encoders shared by the generic methods and the extensions (CPU-sized ResNets).

Shared model pieces live here, not in one method's file (as lightly keeps its in
``models/modules``): SimCLR, DirectCLR, HCSC, CLAWS and SuperCon all build on them.
"""

from __future__ import annotations

import torch
from torch import nn

from plugins.errors import UserInputError

__all__ = ["TinyResNet", "small_resnet"]


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class TinyResNet(nn.Module):
    """A small ResNet for CPU runs: 3x3 stem, one basic block per stage, global average pool.

    Args:
        in_channels: input bands.
        widths: channels per stage; every stage after the first halves the resolution.
    """

    def __init__(self, in_channels: int = 3, widths: tuple[int, ...] = (32, 64, 128)):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        stages, cin = [], widths[0]
        for i, w in enumerate(widths):
            stages.append(_BasicBlock(cin, w, 1 if i == 0 else 2))
            cin = w
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.stages(self.stem(x))).flatten(1)


def small_resnet(in_channels: int = 3, arch: str = "resnet18") -> tuple[nn.Module, int]:
    """Encoder for small images and its feature dimension.

    ``arch="tiny"`` gives :class:`TinyResNet`; a torchvision name (``resnet18``, ``resnet34``,
    ``resnet50``) gives that network with random weights, a 3x3 stride-1 stem, no max-pool (the
    CIFAR variant of the SimCLR paper, Appendix B.9) and the classifier removed.
    """
    if arch == "tiny":
        net = TinyResNet(in_channels)
        return net, net.out_dim
    import torchvision  # only for torchvision encoders: its import costs seconds at start-up

    if not hasattr(torchvision.models, arch) or not arch.startswith(
        ("resnet", "wide_resnet", "resnext")
    ):
        raise UserInputError(
            f"unknown encoder arch '{arch}'; use 'tiny' or a torchvision ResNet name such as 'resnet18'."
        )
    net = getattr(torchvision.models, arch)(weights=None)
    net.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
    net.maxpool = nn.Identity()
    dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, dim
