"""Differentiable Siamese Augmentation (DSA; Zhao & Bilen, "Dataset Condensation with Differentiable
Siamese Augmentation", ICML 2021, Sec. 3 and Appendix).

Each call picks ONE operation from ``color, crop, cutout, flip, scale, rotate`` (the paper's "S" mode)
and samples its random parameters once per *group*. A sample uses the parameters of its group, so the
real and the synthetic batch of class ``c`` are transformed identically when both are given group ``c``
(the Siamese part), while evaluation training gives every sample its own group. Every operation is a
differentiable function of the image batch (affine ones through ``grid_sample``), batched on tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["DSAConfig", "DSAParams", "OPS", "sample_dsa", "apply_dsa", "dsa"]

OPS = ("color", "crop", "cutout", "flip", "scale", "rotate")


@dataclass(frozen=True)
class DSAConfig:
    """Augmentation strengths: the DSA paper's CIFAR-10 settings (Zhao & Bilen 2021, Appendix)."""

    ops: tuple[str, ...] = OPS
    brightness: float = 1.0  # x + (u - 0.5) * 1.0
    saturation: float = 2.0  # grey + (x - grey) * (u * 2.0)
    contrast: float = 0.5  # mean + (x - mean) * (u + 0.5)
    crop_pad: float = 0.125  # translate by up to 1/8 of the side, zero filled
    cutout: float = 0.5  # erase a square of half the side
    prob_flip: float = 0.5
    scale: float = 1.2  # per-axis scale in [1/1.2, 1.2]
    rotate: float = 15.0  # degrees, uniform in [-15, 15]


@dataclass
class DSAParams:
    """One operation and its random parameters for ``groups`` groups.

    Attributes:
        op: operation name.
        values: op-specific tensors whose first dimension is the group, e.g. ``(G, 2)`` shifts.
    """

    op: str
    values: dict[str, torch.Tensor]

    @property
    def groups(self) -> int:
        return next(iter(self.values.values())).shape[0]


def sample_dsa(
    groups: int,
    image_size: int,
    config: DSAConfig = DSAConfig(),
    generator: torch.Generator | None = None,
    op: str | None = None,
    device: torch.device | str = "cpu",
) -> DSAParams:
    """Draw one operation (uniformly from ``config.ops`` unless ``op`` is given) and its parameters
    for ``groups`` groups. ``image_size`` is the side in pixels (for integer crop/cutout sizes)."""
    if op is None:
        op = config.ops[int(torch.randint(len(config.ops), (1,), generator=generator))]
    if op not in OPS:
        raise ValueError(f"unknown DSA op {op!r}; choose from {OPS}.")

    def u(*shape: int) -> torch.Tensor:
        return torch.rand(groups, *shape, generator=generator).to(device)

    if op == "color":
        values = {"brightness": u(), "saturation": u(), "contrast": u()}
    elif op == "crop":
        pad = int(image_size * config.crop_pad + 0.5)
        shift = torch.randint(-pad, pad + 1, (groups, 2), generator=generator)
        values = {"shift": shift.to(device)}
    elif op == "cutout":
        side = int(image_size * config.cutout + 0.5)
        lo, hi = side // 2, image_size - side // 2
        centre = torch.randint(lo, max(hi, lo) + 1, (groups, 2), generator=generator)
        values = {"centre": centre.to(device), "side": torch.full((groups,), side, device=device)}
    elif op == "flip":
        values = {"flip": u() < config.prob_flip}
    elif op == "scale":
        values = {"scale": (u(2) * (config.scale - 1.0 / config.scale) + 1.0 / config.scale)}
    else:
        values = {"angle": (u() - 0.5) * 2 * config.rotate * math.pi / 180}
    return DSAParams(op, values)


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def apply_dsa(
    x: torch.Tensor, params: DSAParams, group: torch.Tensor, config: DSAConfig = DSAConfig()
) -> torch.Tensor:
    """Apply ``params`` to ``x`` (B, C, H, W); sample ``i`` uses the parameters of ``group[i]``.

    Args:
        x: images (B, C, H, W), square.
        params: from :func:`sample_dsa`.
        group: (B,) long indices into ``params``' groups.
    """
    v = {k: t.to(x.device)[group.to(x.device)] for k, t in params.values.items()}
    b, _, h, w = x.shape
    if params.op == "color":
        x = x + (v["brightness"] - 0.5).view(b, 1, 1, 1) * config.brightness
        grey = x.mean(dim=1, keepdim=True)
        x = grey + (x - grey) * (v["saturation"] * config.saturation).view(b, 1, 1, 1)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return mean + (x - mean) * (v["contrast"] + config.contrast).view(b, 1, 1, 1)
    if params.op == "cutout":
        rows = torch.arange(h, device=x.device).view(1, h, 1)
        cols = torch.arange(w, device=x.device).view(1, 1, w)
        half = (v["side"] // 2).view(b, 1, 1)
        cy, cx = v["centre"][:, 0].view(b, 1, 1), v["centre"][:, 1].view(b, 1, 1)
        hole = (rows >= cy - half) & (rows < cy - half + 2 * half)
        hole = hole & (cols >= cx - half) & (cols < cx - half + 2 * half)
        return x * (~hole).unsqueeze(1).to(x.dtype)
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
    if params.op == "crop":
        # content moves by (dx, dy) whole pixels: out(p) = in(p - shift); 2/W per pixel in
        # normalised coordinates (align_corners=False), so pixel centres land on pixel centres
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0
        theta[:, 0, 2] = -v["shift"][:, 0].to(x.dtype) * 2.0 / w
        theta[:, 1, 2] = -v["shift"][:, 1].to(x.dtype) * 2.0 / h
    elif params.op == "flip":
        theta[:, 0, 0] = 1.0 - 2.0 * v["flip"].to(x.dtype)
        theta[:, 1, 1] = 1.0
    elif params.op == "scale":
        theta[:, 0, 0] = v["scale"][:, 0]
        theta[:, 1, 1] = v["scale"][:, 1]
    else:
        cos, sin = torch.cos(v["angle"]), torch.sin(v["angle"])
        theta[:, 0, 0], theta[:, 0, 1] = cos, sin
        theta[:, 1, 0], theta[:, 1, 1] = -sin, cos
    return _affine(x, theta)


def dsa(
    x: torch.Tensor,
    config: DSAConfig = DSAConfig(),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Non-Siamese DSA for training on a set: one op per call, own parameters per sample."""
    params = sample_dsa(len(x), x.shape[-1], config, generator, device=x.device)
    return apply_dsa(x, params, torch.arange(len(x), device=x.device), config)
