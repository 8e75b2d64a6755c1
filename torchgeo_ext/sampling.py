"""GLCNet's two views and the matched local windows between them (Li et al., TGRS 2022, Sec. III-C).

Both views are random resized crops of the same source image; view 2 is also flipped, rotated by a
multiple of 90 degrees and photometrically changed. Every geometric op is one affine map per sample
(``affine_grid``/``grid_sample``), so the whole batch is warped at once, and the same map carried
over a source *pixel-index map* tells where each source pixel lands in each view. Matched windows
are windows of ``patch_size`` pixels centred, in both views, on view pixels that sample the same
source pixel. Nothing here loops over images or windows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from plugins.data.augment import gaussian_blur, random_resized_crop_params
from torchgeo_ext.config import PAPER


def view_theta(
    boxes: torch.Tensor,
    hflip: torch.Tensor | None = None,
    vflip: torch.Tensor | None = None,
    rot_k: torch.Tensor | None = None,
) -> torch.Tensor:
    """Affine maps (N, 2, 3) from view coordinates to source coordinates (normalised, [-1, 1]).

    The view point ``p`` is rotated by ``rot_k * 90`` degrees, flipped, then scaled and shifted
    into the crop box ``(cx, cy, w, h)`` (N, 4) of :func:`random_resized_crop_params`.
    """
    n, dev, dt = boxes.shape[0], boxes.device, boxes.dtype
    m = torch.eye(2, device=dev, dtype=dt).repeat(n, 1, 1)
    if rot_k is not None:
        ang = rot_k.to(dt) * (math.pi / 2)
        c, s = torch.cos(ang).round(), torch.sin(ang).round()
        m = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)
    sign = torch.ones(n, 2, device=dev, dtype=dt)
    if hflip is not None:
        sign[:, 0] = torch.where(hflip, -1.0, 1.0)
    if vflip is not None:
        sign[:, 1] = torch.where(vflip, -1.0, 1.0)
    m = (boxes[:, 2:4] * sign)[:, :, None] * m  # scale rows: diag(w, h) @ flip @ rot
    return torch.cat([m, boxes[:, 0:2, None]], dim=2)


def warp(x: torch.Tensor, theta: torch.Tensor, size: int, mode: str = "bilinear") -> torch.Tensor:
    """Resample (N, C, H, W) through ``theta`` (N, 2, 3) to (N, C, size, size)."""
    grid = F.affine_grid(
        theta.to(x.dtype), [x.shape[0], x.shape[1], size, size], align_corners=False
    )
    return F.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=False)


def source_index_map(theta: torch.Tensor, src_hw: tuple[int, int], size: int) -> torch.Tensor:
    """For every view pixel, 1 + the flat index of the source pixel it samples (nearest); (N, size, size).

    0 would mean outside the source (cannot happen for crop boxes inside the image).
    """
    h, w = src_hw
    if h * w >= 2**24:
        raise ValueError(
            f"source images of {h}x{w} pixels are too large for an exact float32 index map"
        )
    idx = torch.arange(1, h * w + 1, device=theta.device, dtype=torch.float32).reshape(1, 1, h, w)
    idx = idx.expand(theta.shape[0], 1, h, w)
    grid = F.affine_grid(theta.float(), [theta.shape[0], 1, size, size], align_corners=False)
    out = F.grid_sample(idx, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return out[:, 0].round().long()


def _centre_mask(size: int, patch_size: int, device: torch.device) -> torch.Tensor:
    """(size*size,) True where a window of ``patch_size`` centred there stays inside the view."""
    half = patch_size // 2
    r = torch.arange(size, device=device)
    ok = (r >= half) & (r - half + patch_size <= size)
    return (ok[:, None] & ok[None, :]).reshape(-1)


def match_windows(
    theta1: torch.Tensor,
    theta2: torch.Tensor,
    src_hw: tuple[int, int],
    size: int,
    patch_size: int = PAPER.patch_size,
    patch_num: int = PAPER.patch_num,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample ``patch_num`` matched window centres per image, batched.

    A view-1 pixel ``a`` and a view-2 pixel ``b`` match when both sample the same source pixel
    (nearest-neighbour index map) and a ``patch_size`` window centred on each lies inside its view.
    Candidates are drawn uniformly without replacement among the matching view-1 pixels.

    Args:
        theta1, theta2: (B, 2, 3) view-to-source maps of :func:`view_theta`.
        src_hw: source image height and width.
        size: view side length.

    Returns:
        ``centres1`` (B, K, 2) and ``centres2`` (B, K, 2) as integer (row, col) of the window centres
        (a window covers rows ``c - patch_size // 2`` to ``c - patch_size // 2 + patch_size - 1``),
        and ``valid`` (B, K) bool: False where the two views overlap in fewer than K usable pixels
        (those pairs must be left out of the loss).
    """
    if patch_size > size:
        raise ValueError(f"patch_size {patch_size} is larger than the view size {size}")
    b, dev = theta1.shape[0], theta1.device
    h, w = src_hw
    keep = _centre_mask(size, patch_size, dev)  # (S*S,)
    src1 = source_index_map(theta1, src_hw, size).reshape(b, -1)
    src2 = source_index_map(theta2, src_hw, size).reshape(b, -1)
    src1 = torch.where(keep, src1, 0)  # slot 0 collects every unusable pixel
    src2 = torch.where(keep, src2, 0)
    # inverse of view 2: for each source pixel, one usable view-2 pixel that samples it (or -1)
    inv2 = torch.full((b, h * w + 1), -1, device=dev, dtype=torch.long)
    inv2.scatter_(1, src2, torch.arange(size * size, device=dev).expand(b, -1).contiguous())
    inv2[:, 0] = -1
    partner = inv2.gather(1, src1)  # (B, S*S): view-2 pixel matching each view-1 pixel
    score = torch.rand(partner.shape, device=dev, generator=generator)
    score = score.masked_fill(partner < 0, -1.0)
    top, pick1 = score.topk(patch_num, dim=1)
    valid = top >= 0
    pick2 = partner.gather(1, pick1).clamp_min(0)
    to_rc = lambda flat: torch.stack([flat // size, flat % size], dim=-1)  # noqa: E731
    return to_rc(pick1), to_rc(pick2), valid


def window_mean(feat: torch.Tensor, centres: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Mean of ``feat`` (B, C, H, W) over the windows centred at ``centres`` (B, K, 2): (B, K, C).

    Gathers the K * patch_size^2 pixels directly (cheaper than pooling the whole map).
    """
    b, c, h, w = feat.shape
    k = centres.shape[1]
    off = torch.arange(patch_size, device=feat.device) - patch_size // 2
    rows = centres[:, :, 0, None, None] + off[None, None, :, None]  # (B, K, p, 1)
    cols = centres[:, :, 1, None, None] + off[None, None, None, :]  # (B, K, 1, p)
    flat = (rows * w + cols).reshape(b, 1, -1).expand(b, c, -1)
    vals = feat.reshape(b, c, h * w).gather(2, flat).reshape(b, c, k, patch_size * patch_size)
    return vals.mean(-1).transpose(1, 2)


def bilinear_weights(
    out_size: int, in_size: int, device: torch.device | None = None
) -> torch.Tensor:
    """(out_size, in_size) matrix U with ``U @ v`` = ``F.interpolate`` of ``v`` along one axis.

    Bilinear, ``align_corners=False``, as PyTorch computes it for an explicit output size:
    source coordinate ``(i + 0.5) * in / out - 0.5`` clamped at 0, neighbours ``floor`` and
    ``floor + 1`` (clamped at the last row).
    """
    i = torch.arange(out_size, device=device, dtype=torch.float64)
    src = ((i + 0.5) * (in_size / out_size) - 0.5).clamp_min(0.0)
    lo = src.floor().long().clamp_max(in_size - 1)
    hi = (lo + 1).clamp_max(in_size - 1)
    frac = src - lo
    u = torch.zeros(out_size, in_size, device=device, dtype=torch.float64)
    u.index_put_((torch.arange(out_size, device=device), lo), 1 - frac, accumulate=True)
    u.index_put_((torch.arange(out_size, device=device), hi), frac, accumulate=True)
    return u


def upsampled_window_mean(
    feat: torch.Tensor, centres: torch.Tensor, patch_size: int, size: tuple[int, int]
) -> torch.Tensor:
    """``window_mean(F.interpolate(feat, size, mode="bilinear"), centres, patch_size)`` without
    building the upsampled map: (B, C, h, w) low-resolution features -> (B, K, C).

    Upsampling is linear and separable, ``D = U_y E U_x^T``, so the mean of D over rows R and
    columns Q is ``a_R^T E a_Q`` with ``a_R`` the mean of U_y's rows in R. This skips the
    (B, C, H, W) map and its backward: at the paper's scale (batch 256, 64 channels, 224 px) that
    map alone is 3.3 GB per view in float32.
    """
    b, c, h, w = feat.shape
    big_h, big_w = size
    off = torch.arange(patch_size, device=feat.device) - patch_size // 2
    uy = bilinear_weights(big_h, h, feat.device).to(feat.dtype)
    ux = bilinear_weights(big_w, w, feat.device).to(feat.dtype)
    ay = uy[centres[..., 0, None] + off].mean(2)  # (B, K, h)
    ax = ux[centres[..., 1, None] + off].mean(2)  # (B, K, w)
    return torch.einsum("bkh,bchw,bkw->bkc", ay, feat, ax)


def _hsv_jitter(
    rgb: torch.Tensor, hue: torch.Tensor, sat: torch.Tensor, val: torch.Tensor
) -> torch.Tensor:
    """Per-sample hue shift (fraction of a turn) and saturation/value factors on (N, 3, H, W) in [0, 1]."""
    from kornia.color import hsv_to_rgb, rgb_to_hsv

    hsv = rgb_to_hsv(rgb.clamp(0, 1))
    h = torch.remainder(hsv[:, 0:1] + hue * 2 * math.pi, 2 * math.pi)
    s = (hsv[:, 1:2] * sat).clamp(0, 1)
    v = (hsv[:, 2:3] * val).clamp(0, 1)
    return hsv_to_rgb(torch.cat([h, s, v], 1))


class GLCNetViews(nn.Module):
    """The two views of GLCNet for (B, C, H, W) batches in [0, 1], any C, on any device.

    View 1: random resized crop (scale 0.4-1, ratio 3/4-4/3) to ``size``. View 2: the same kind of
    crop, then horizontal/vertical flips (p=0.5 each), rot90 (p=0.8), colour change (p=0.8: hue /
    saturation / value on ``rgb_bands``, per-band brightness and contrast on every other band),
    band-gray (p=0.1) and Gaussian blur (p=0.5). ``forward`` returns ``(v1, v2, theta1, theta2)``.

    Args:
        size: view side length.
        rgb_bands: indices of the red, green and blue bands, or ``None`` when there are none
            (then every band gets brightness/contrast jitter).
        hue, saturation, value: jitter strengths (hue as a fraction of a turn).
    """

    def __init__(
        self,
        size: int = PAPER.size,
        scale: tuple[float, float] = PAPER.crop_scale,
        ratio: tuple[float, float] = PAPER.crop_ratio,
        p_rot90: float = PAPER.p_rot90,
        p_color: float = PAPER.p_color,
        p_gray: float = PAPER.p_gray,
        p_blur: float = PAPER.p_blur,
        rgb_bands: Sequence[int] | None = (0, 1, 2),
        hue: float = 0.1,
        saturation: float = 0.4,
        value: float = 0.4,
    ):
        super().__init__()
        self.size, self.scale, self.ratio = size, tuple(scale), tuple(ratio)
        self.p_rot90, self.p_color, self.p_gray, self.p_blur = p_rot90, p_color, p_gray, p_blur
        self.rgb_bands = list(rgb_bands) if rgb_bands is not None else None
        self.hue, self.saturation, self.value = hue, saturation, value

    def geometry(self, n: int, device: torch.device, second: bool) -> torch.Tensor:
        boxes = random_resized_crop_params(n, self.scale, self.ratio, device=device)
        if not second:
            return view_theta(boxes)
        hflip = torch.rand(n, device=device) < 0.5
        vflip = torch.rand(n, device=device) < 0.5
        rot = torch.randint(1, 4, (n,), device=device) * (
            torch.rand(n, device=device) < self.p_rot90
        )
        return view_theta(boxes, hflip, vflip, rot)

    def photometric(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        dev, dt = x.device, x.dtype
        u = lambda *s: torch.rand(*s, device=dev, dtype=dt)  # noqa: E731
        on = (u(n, 1, 1, 1) < self.p_color).to(dt)
        bright = 1 + self.value * (2 * u(n, c, 1, 1) - 1)
        contrast = 1 + self.saturation * (2 * u(n, c, 1, 1) - 1)
        mean = x.mean((2, 3), keepdim=True)
        y = (x * bright - mean) * contrast + mean
        rgb = self.rgb_bands if self.rgb_bands is not None and c >= 3 else None
        if rgb is not None:
            jit = _hsv_jitter(
                x[:, rgb],
                self.hue * (2 * u(n, 1, 1, 1) - 1),
                1 + self.saturation * (2 * u(n, 1, 1, 1) - 1),
                1 + self.value * (2 * u(n, 1, 1, 1) - 1),
            )
            y = y.clone()
            y[:, rgb] = jit
        x = on * y + (1 - on) * x
        if c > 1:
            g = (u(n, 1, 1, 1) < self.p_gray).to(dt)
            x = g * x.mean(1, keepdim=True).expand_as(x) + (1 - g) * x
        if self.p_blur > 0:
            ks = max(3, (self.size // 10) | 1)
            sigma = 0.1 + 1.9 * torch.rand(n, device=dev)
            b = (u(n, 1, 1, 1) < self.p_blur).to(dt)
            x = b * gaussian_blur(x, sigma, ks) + (1 - b) * x
        return x.clamp(0, 1)

    @torch.no_grad()
    def forward(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        if x.ndim != 4:
            raise ValueError(f"expected a batch (B, C, H, W), got shape {tuple(x.shape)}")
        x = x.float() if not x.is_floating_point() else x
        t1 = self.geometry(x.shape[0], x.device, second=False)
        t2 = self.geometry(x.shape[0], x.device, second=True)
        v1 = warp(x, t1, self.size)
        v2 = self.photometric(warp(x, t2, self.size))
        return v1, v2, t1, t2
