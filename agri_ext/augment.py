"""CLAWS's two views: ``x_i`` a random resized crop of the whole image, ``x_c`` a random crop with the
hard mask injected (``x_c * M``). Both get flips, colour jitter (p=0.8) and grayscale (p=0.2) from
``plugins.data.TwoViewAugment`` (batched, any channel count, no per-image loop)."""

from __future__ import annotations

import inspect

import torch
from torch import nn

from agri_ext.config import CLAWSConfig
from plugins.data import TwoViewAugment

__all__ = ["ClawsViews"]

# True once TwoViewAugment.view warps a mask with the view's own crop (proposed foundation change)
_VIEW_TAKES_MASK = "mask" in inspect.signature(TwoViewAugment.view).parameters


class ClawsViews(nn.Module):
    """``forward(x, masks) -> (x_i, x_c)`` for (B, C, H, W) images in [0, 1] and (B, 1, H, W) masks.

    When ``TwoViewAugment.view`` accepts a ``mask`` it is warped with the view's crop and multiplies
    the finished view (paper order: crop, augment, ``x_c * M``). Otherwise the mask multiplies the
    image before the crop: cropping commutes with a pixel-wise product, so the same plant pixels
    survive (up to bilinear edges), but colour jitter turns the zero background into one flat grey
    per image, which carries no soil texture.

    With ``symmetric=True`` (the SimCLR and supervised-SimCLR baselines) both views come from the
    ``x_i`` pipeline and no mask is used.
    """

    def __init__(self, size: int, config: CLAWSConfig, symmetric: bool = False):
        super().__init__()
        kw = dict(
            p_jitter=config.p_jitter,
            p_gray=config.p_gray,
            p_blur=0.0,  # the paper lists no blur
            strength=config.jitter_strength,
        )
        self.view_i = TwoViewAugment(size, scale=config.crop_scale, **kw)
        self.view_c = (
            self.view_i if symmetric else TwoViewAugment(size, scale=config.crop_scale_c, **kw)
        )
        self.use_mask = config.mask == "pixel" and not symmetric

    def forward(
        self, x: torch.Tensor, masks: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x_i = self.view_i.view(x)
        if not self.use_mask:
            return x_i, self.view_c.view(x)
        if masks is None:
            raise ValueError("mask='pixel' needs masks (B, 1, H, W) for the crop view")
        if _VIEW_TAKES_MASK:
            return x_i, self.view_c.view(x, mask=masks)
        return x_i, self.view_c.view(x * masks.to(x.dtype))
