"""ConvNet-3 of the dataset-condensation papers (Zhao et al., ICLR 2021, Sec. 4; Lee et al., ICML 2022).

Three blocks of [Conv3x3(width) -> instance norm -> ReLU -> AvgPool2] and a linear classifier. Instance
norm is ``GroupNorm(width, width)`` (one group per channel, affine), so every sample is normalised on
its own: a batch's gradient is the sum of per-sample gradients, which the one-pass DCC real gradient
relies on.
"""

from __future__ import annotations

import torch
from torch import nn

from plugins.errors import UserInputError

__all__ = ["ConvNet"]


class ConvNet(nn.Module):
    """ConvNet-D (default D=3, width 128) for (B, C, H, W) images.

    Args:
        in_channels: image channels C.
        num_classes: number of logits.
        image_size: side H = W of the input (each block halves it; must stay >= 1).
        width: channels of every conv (128 in the papers).
        depth: number of conv blocks (3 in the papers).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: int,
        width: int = 128,
        depth: int = 3,
    ):
        super().__init__()
        if image_size >> depth < 1:
            raise UserInputError(
                f"image_size {image_size} is too small for a depth-{depth} ConvNet "
                f"(needs at least {2**depth} pixels per side)."
            )
        layers: list[nn.Module] = []
        c = in_channels
        for _ in range(depth):
            layers += [
                nn.Conv2d(c, width, 3, padding=1),
                nn.GroupNorm(width, width, affine=True),
                nn.ReLU(inplace=False),
                nn.AvgPool2d(2),
            ]
            c = width
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.feat_dim = width * (image_size >> depth) ** 2
        self.classifier = nn.Linear(self.feat_dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, feat_dim) penultimate features."""
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, num_classes) logits."""
        return self.classifier(self.features(x))
