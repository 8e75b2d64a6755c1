"""SuperCon's asymmetric views (Chen et al. 2022, Sec. 3.2).

One view is the plain resized image; the other is strongly augmented (random resized crop, colour
jitter 0.8/0.8/0.8 with p=0.3, grayscale p=0.2, horizontal flip, Gaussian blur p=0.2). The
symmetric form of SupCon (Khosla et al. 2020) augments both views and is kept as a baseline.

Batched on (N, C, H, W) tensors in [0, 1] with per-sample random parameters, so the training step
never loops over samples; the ops come from :class:`plugins.data.TwoViewAugment`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from monai_ext.supercon.config import SuperConConfig
from plugins.data import TwoViewAugment

__all__ = ["AsymmetricViews", "resize"]


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, size, size), bilinear; identity when already that size."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


class AsymmetricViews(nn.Module):
    """``forward(x) -> (view_1, view_2)``, each (N, C, size, size).

    Args:
        size: output side length.
        config: augmentation probabilities and strengths (defaults: the paper's).
        symmetric: both views strongly augmented (original SupCon) instead of plain + strong.

    Note: the paper's hue jitter (0.2) has no batched equivalent in ``TwoViewAugment`` and is not
    applied; brightness, contrast and saturation are.
    """

    def __init__(self, size: int, config: SuperConConfig | None = None, symmetric: bool = False):
        super().__init__()
        cfg = config or SuperConConfig()
        self.size = size
        self.symmetric = symmetric
        self.strong = TwoViewAugment(
            size,
            scale=tuple(cfg.crop_scale),
            p_flip=cfg.p_flip,
            p_jitter=cfg.p_jitter,
            p_gray=cfg.p_gray,
            p_blur=cfg.p_blur,
            strength=cfg.jitter_strength,
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not x.is_floating_point():
            x = x.float() / 255
        first = self.strong.view(x) if self.symmetric else resize(x, self.size)
        return first, self.strong.view(x)
