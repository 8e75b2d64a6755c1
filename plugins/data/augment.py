"""Batched, device-agnostic two-view augmentation on tensors of any channel count.

Every op draws per-sample parameters as tensors and applies them to the whole batch at once
(``affine_grid``/``grid_sample`` for geometry), so it runs on the GPU without a Python loop over images.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def random_resized_crop_params(
    n: int,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per-sample crop boxes as (N, 4) ``(cx, cy, w, h)`` in normalised [-1, 1] coordinates.

    Area fraction ~ U(scale), log aspect ratio ~ U(log ratio); the box is clipped to the image.
    """
    u = torch.rand(n, 4, device=device, generator=generator)
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1]
    r = log_r.exp()
    w = (area * r).sqrt().clamp(max=1.0)
    h = (area / r).sqrt().clamp(max=1.0)
    cx = (1 - w) * (2 * u[:, 2] - 1)
    cy = (1 - h) * (2 * u[:, 3] - 1)
    return torch.stack([cx, cy, w, h], dim=1)


def crop_theta(boxes: torch.Tensor, flip: torch.Tensor | None = None) -> torch.Tensor:
    """Affine matrices (N, 2, 3) mapping output coordinates to input coordinates for ``affine_grid``."""
    n = boxes.shape[0]
    theta = torch.zeros(n, 2, 3, device=boxes.device, dtype=boxes.dtype)
    sx = boxes[:, 2]
    if flip is not None:
        sx = torch.where(flip, -sx, sx)
    theta[:, 0, 0] = sx
    theta[:, 1, 1] = boxes[:, 3]
    theta[:, 0, 2] = boxes[:, 0]
    theta[:, 1, 2] = boxes[:, 1]
    return theta


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Per-sample Gaussian blur with sigma (N,), separable, reflect padding."""
    n, c, h, w = x.shape
    half = kernel_size // 2
    t = torch.arange(-half, half + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-(t[None, :] ** 2) / (2 * sigma[:, None].to(x.dtype) ** 2))
    k = k / k.sum(1, keepdim=True)  # (N, K)
    weight_h = k.repeat_interleave(c, 0)[:, None, None, :]  # (N*C, 1, 1, K)
    weight_v = k.repeat_interleave(c, 0)[:, None, :, None]
    y = x.reshape(1, n * c, h, w)
    y = F.conv2d(F.pad(y, (half, half, 0, 0), mode="reflect"), weight_h, groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, half, half), mode="reflect"), weight_v, groups=n * c)
    return y.reshape(n, c, h, w)


class TwoViewAugment(nn.Module):
    """SimCLR-style view generator for (N, C, H, W) batches in [0, 1], any C.

    Ops, each with per-sample random parameters: random resized crop to ``size``, horizontal flip,
    per-channel brightness/contrast jitter (with probability ``p_jitter``; for C == 3 also saturation
    towards the grey value), grayscale (channel mean broadcast, ``p_gray``), Gaussian blur (``p_blur``).
    ``forward(x)`` returns two independently augmented views. Integer (uint8) input is scaled to
    [0, 1] first.

    Args:
        size: output side length.
        scale: crop area fraction range.
        p_flip, p_jitter, p_gray, p_blur: probabilities.
        strength: colour jitter strength s (brightness/contrast/saturation 0.8 s).
    """

    def __init__(
        self,
        size: int,
        scale: tuple[float, float] = (0.2, 1.0),
        p_flip: float = 0.5,
        p_jitter: float = 0.8,
        p_gray: float = 0.2,
        p_blur: float = 0.0,
        strength: float = 0.5,
    ):
        super().__init__()
        self.size = size
        self.scale = scale
        self.p_flip, self.p_jitter, self.p_gray, self.p_blur = p_flip, p_jitter, p_gray, p_blur
        self.strength = strength

    def view(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"expected a batch (N, C, H, W), got shape {tuple(x.shape)}")
        n, c = x.shape[:2]
        dev = x.device
        if not x.is_floating_point():  # uint8 images: 0..255 -> [0, 1]
            x = x.float() / 255
        dt = x.dtype
        boxes = random_resized_crop_params(n, self.scale, device=dev).to(dt)
        flip = torch.rand(n, device=dev) < self.p_flip
        grid = F.affine_grid(
            crop_theta(boxes, flip), [n, c, self.size, self.size], align_corners=False
        )
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

        s = 0.8 * self.strength
        jitter = (torch.rand(n, 1, 1, 1, device=dev) < self.p_jitter).to(dt)
        brightness = 1 + s * (2 * torch.rand(n, c, 1, 1, device=dev, dtype=dt) - 1)
        contrast = 1 + s * (2 * torch.rand(n, c, 1, 1, device=dev, dtype=dt) - 1)
        mean = x.mean(dim=(2, 3), keepdim=True)
        y = (x * brightness - mean) * contrast + mean
        if c == 3:
            sat = 1 + s * (2 * torch.rand(n, 1, 1, 1, device=dev, dtype=dt) - 1)
            gray = y.mean(1, keepdim=True)
            y = gray + (y - gray) * sat
        x = jitter * y + (1 - jitter) * x

        if c > 1 and self.p_gray > 0:
            g = (torch.rand(n, 1, 1, 1, device=dev) < self.p_gray).to(dt)
            x = g * x.mean(1, keepdim=True).expand_as(x) + (1 - g) * x
        if self.p_blur > 0:
            ks = max(3, (self.size // 10) | 1)
            sigma = 0.1 + 1.9 * torch.rand(n, device=dev)
            b = (torch.rand(n, 1, 1, 1, device=dev) < self.p_blur).to(dt)
            x = b * gaussian_blur(x, sigma, ks) + (1 - b) * x
        return x.clamp(0, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.view(x), self.view(x)
