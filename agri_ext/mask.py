"""Hard attention masks: vegetation by Excess Green + Otsu (CLAWS's default ``mask_fn``), and an Otsu
foreground mask for single-channel images. Batched on the images' device, no per-image loop."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from plugins.errors import UserInputError

__all__ = [
    "otsu_threshold",
    "excess_green",
    "excess_green_mask",
    "otsu_foreground_mask",
    "default_mask_fn",
    "compute_masks",
]

MaskFn = Callable[[torch.Tensor], torch.Tensor]


def otsu_threshold(values: torch.Tensor, valid: torch.Tensor | None = None, bins: int = 256):
    """Per-row Otsu threshold (Otsu, IEEE TSMC 1979): maximise the between-class variance.

    Args:
        values: (N, P) values per image.
        valid: optional (N, P) bool, pixels that take part (e.g. not transparent).
        bins: histogram bins between each row's min and max.

    Returns:
        (N,) thresholds; a pixel is foreground when ``value > threshold``. Constant rows get their
        value as threshold (so nothing is foreground).
    """
    v = values.float()
    if valid is None:
        valid = torch.ones_like(v, dtype=torch.bool)
    big = torch.finfo(v.dtype).max
    lo = torch.where(valid, v, big).amin(1, keepdim=True)
    hi = torch.where(valid, v, -big).amax(1, keepdim=True)
    hi = torch.maximum(hi, lo)
    width = (hi - lo).clamp_min(1e-12) / bins
    idx = ((v - lo) / width).floor().clamp(0, bins - 1).long()
    hist = torch.zeros(v.shape[0], bins, device=v.device, dtype=v.dtype)
    hist.scatter_add_(1, idx, valid.to(v.dtype))
    centres = lo + width * (torch.arange(bins, device=v.device, dtype=v.dtype) + 0.5)
    w0 = hist.cumsum(1)  # pixels at or below each bin
    s0 = (hist * centres).cumsum(1)
    total, total_s = w0[:, -1:], s0[:, -1:]
    w1 = total - w0
    mu0 = s0 / w0.clamp_min(1e-12)
    mu1 = (total_s - s0) / w1.clamp_min(1e-12)
    between = w0 * w1 * (mu0 - mu1) ** 2
    k = between.argmax(1, keepdim=True)
    # threshold at the upper edge of the best bin: bins 0..k are background
    t = lo + width * (k + 1).to(v.dtype)
    return torch.where(hi > lo, t, hi).squeeze(1)


def excess_green(images: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """ExG = 2g - r - b on chromatic coordinates r = R/(R+G+B), ... (Woebbecke et al., 1995).

    Args:
        images: (N, 3, H, W) RGB in [0, 1].

    Returns:
        (N, H, W) in [-1, 2]; 0 for black pixels.
    """
    rgb = images.float()
    s = rgb.sum(1)
    chrom = rgb / s.clamp_min(eps).unsqueeze(1)
    exg = 2 * chrom[:, 1] - chrom[:, 0] - chrom[:, 2]
    return torch.where(s > eps, exg, torch.zeros_like(exg))


def _finish(
    fg: torch.Tensor, min_fraction: float, return_fallback: bool, what: str
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Fall back to the whole image where the mask is (nearly) empty, so no view is all zero."""
    n = fg.shape[0]
    frac = fg.reshape(n, -1).float().mean(1)
    fallback = frac < max(min_fraction, 1e-12)
    fg = fg | fallback[:, None, None]
    masks = fg.unsqueeze(1).float()
    if return_fallback:
        return masks, fallback
    count = int(fallback.sum())
    if count:
        warnings.warn(
            f"{count} of {n} images have no {what} pixels; their mask is the whole image.",
            stacklevel=3,
        )
    return masks


def excess_green_mask(
    images: torch.Tensor,
    min_exg: float = 0.1,
    min_fraction: float = 0.005,
    return_fallback: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Vegetation mask by Excess Green with a per-image Otsu threshold (CLAWS's default ``mask_fn``).

    A pixel is vegetation when ``ExG > max(otsu, min_exg)``: Otsu splits plant from soil, and
    ``min_exg`` stops it from splitting soil into two halves when an image holds no plant.

    Args:
        images: (N, 3, H, W) RGB or (N, 4, H, W) RGBA in [0, 1] (transparent pixels are background).
        min_exg: floor on the threshold (ExG = 3g - 1 in chromatic coordinates; 0 is grey).
        min_fraction: masks covering less of the image fall back to all ones.
        return_fallback: also return the (N,) bool of images that fell back.

    Returns:
        (N, 1, H, W) float masks in {0, 1} (and the fallback flags). Without ``return_fallback`` a
        warning reports how many images fell back.
    """
    if images.ndim != 4 or images.shape[1] not in (3, 4):
        raise UserInputError(
            "excess_green_mask needs RGB or RGBA images (N, 3|4, H, W), got shape "
            f"{tuple(images.shape)}; use otsu_foreground_mask for single-channel images."
        )
    n, c, h, w = images.shape
    exg = excess_green(images[:, :3])
    valid = images[:, 3] > 0 if c == 4 else torch.ones_like(exg, dtype=torch.bool)
    t = otsu_threshold(exg.reshape(n, -1), valid.reshape(n, -1))
    fg = (exg > torch.clamp_min(t, min_exg)[:, None, None]) & valid
    return _finish(fg, min_fraction, return_fallback, "vegetation")


def otsu_foreground_mask(
    images: torch.Tensor, min_fraction: float = 0.005, return_fallback: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Foreground = channel-mean intensity above its per-image Otsu threshold (digits default).

    Args:
        images: (N, C, H, W) in [0, 1], any C.

    Returns:
        (N, 1, H, W) float masks in {0, 1} (and the (N,) fallback flags when asked).
    """
    if images.ndim != 4:
        raise UserInputError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}.")
    n = images.shape[0]
    gray = images.float().mean(1)
    t = otsu_threshold(gray.reshape(n, -1))
    return _finish(gray > t[:, None, None], min_fraction, return_fallback, "foreground")


def default_mask_fn(
    images: torch.Tensor, min_exg: float = 0.1, min_fraction: float = 0.005
) -> tuple[torch.Tensor, torch.Tensor]:
    """ExG-Otsu for RGB/RGBA, intensity Otsu otherwise. Returns (masks (N,1,H,W), fallback (N,))."""
    if images.shape[1] in (3, 4):
        return excess_green_mask(images, min_exg, min_fraction, return_fallback=True)
    return otsu_foreground_mask(images, min_fraction, return_fallback=True)


@torch.no_grad()
def compute_masks(
    images: torch.Tensor,
    mask_fn: MaskFn | None = None,
    batch_size: int = 512,
    device: torch.device | str | None = None,
    min_exg: float = 0.1,
    min_fraction: float = 0.005,
) -> tuple[torch.Tensor, int]:
    """Masks (N, 1, H, W) for a whole image set, in batches on ``device``; returns them on the images'
    device with the number of images whose mask fell back to the whole image.

    ``mask_fn`` (user's own) maps (B, C, H, W) to (B, 1, H, W) or (B, H, W) values in {0, 1}; empty
    masks from it fall back to the whole image too.
    """
    device = device or images.device
    out, fallbacks = [], 0
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size].to(device)
        if mask_fn is None:
            m, fb = default_mask_fn(x, min_exg, min_fraction)
        else:
            m = mask_fn(x)
            if m.ndim == 3:
                m = m.unsqueeze(1)
            if m.shape != (x.shape[0], 1, *x.shape[2:]):
                raise UserInputError(
                    f"mask_fn must return masks of shape {(x.shape[0], 1, *x.shape[2:])}, "
                    f"got {tuple(m.shape)}."
                )
            m, fb = _finish(m[:, 0] > 0.5, min_fraction, True, "mask")
        out.append(m.to(images.device))
        fallbacks += int(fb.sum())
    return torch.cat(out), fallbacks
