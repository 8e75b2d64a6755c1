"""GLCNet network: DeepLabv3+ with a global style head and a local matching head
(Li et al., TGRS 2022, Sec. III-A/B, Fig. 2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from plugins.heads import ProjectionHead
from plugins.losses import full_precision
from torchgeo_ext.config import PAPER
from torchgeo_ext.sampling import upsampled_window_mean


def style_vector(f: torch.Tensor, use_variance: bool = True) -> torch.Tensor:
    """Style of a feature map (B, C, H, W): ``cat(mean_hw(f), var_hw(f))`` (B, 2C), eq. 2-3.

    The variance is the unbiased one (divides by HW - 1), as ``torch.var`` in the reference code.
    With ``use_variance=False`` (the "no style" ablation) only the mean (B, C) is returned.
    """
    f = full_precision(f)
    mean = f.mean(dim=(2, 3))
    if not use_variance:
        return mean
    return torch.cat([mean, f.var(dim=(2, 3), unbiased=True)], dim=1)


def build_deeplab(backbone: str, in_channels: int, weights: str | bool | None = None) -> nn.Module:
    """smp DeepLabv3+ (output stride 16) without a classifier; ``weights=True`` asks smp for ImageNet."""
    import segmentation_models_pytorch as smp

    net = smp.DeepLabV3Plus(
        encoder_name=backbone,
        encoder_weights="imagenet" if weights is True else None,
        in_channels=in_channels,
        classes=1,
    )
    net.segmentation_head = (
        nn.Identity()
    )  # pretraining has no classifier (and DDP needs no unused params)
    return net


class GLCNetModel(nn.Module):
    """DeepLabv3+ encoder/decoder plus GLCNet's two projection heads.

    * global: ASPP output f -> :func:`style_vector` -> Linear(2c, 256)-ReLU-Linear(256, 64).
    * local: the decoder output (256 channels at stride 4) -> 1x1 conv-BN-ReLU to 64 channels ->
      bilinear upsampling to the input size = the dense map D; window means of D ->
      Linear(64, 64)-ReLU-Linear(64, 64). smp's decoder ends at stride 4 with 256 channels, the
      reference network at input resolution with 64, hence the extra 1x1 layer (it is not
      transferred to fine-tuning).

    Args:
        model: only ``"deeplabv3+"``.
        backbone: smp encoder name (``resnet50`` paper, ``resnet18`` for CPU runs).
        in_channels: input bands.
        weights: ``None``/``False`` random init, ``True`` smp ImageNet encoder weights.
        use_variance: style = mean and variance (paper) or mean only (ablation).
    """

    def __init__(
        self,
        model: str = PAPER.model,
        backbone: str = PAPER.backbone,
        in_channels: int = PAPER.in_channels,
        weights: bool | None = None,
        use_variance: bool = True,
        local_channels: int = PAPER.local_channels,
    ):
        super().__init__()
        if model != "deeplabv3+":
            raise ValueError(
                f"GLCNet is defined on DeepLabv3+; model must be 'deeplabv3+', got {model!r}"
            )
        self.use_variance = use_variance
        self.net = build_deeplab(backbone, in_channels, weights)
        aspp_channels = self.net.decoder.block2[1].num_features  # smp's decoder_channels (256)
        self.dense = nn.Sequential(
            nn.Conv2d(aspp_channels, local_channels, 1, bias=False),
            nn.BatchNorm2d(local_channels),
            nn.ReLU(inplace=True),
        )
        style_in = aspp_channels * (2 if use_variance else 1)
        self.global_head = ProjectionHead(style_in, PAPER.style_dim, PAPER.global_out_dim)
        self.local_head = ProjectionHead(
            local_channels, PAPER.local_hidden_dim, PAPER.local_out_dim
        )

    def features_lowres(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) -> ASPP output f (B, 256, H/16, W/16) and D before its upsampling (B, 64, H/4, W/4)."""
        feats = self.net.encoder(x)
        dec = self.net.decoder
        f = dec.aspp(feats[-1])
        fused = dec.block2(torch.cat([dec.up(f), dec.block1(feats[2])], dim=1))
        return f, self.dense(fused)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) -> ASPP output f (B, 256, H/16, W/16) and dense map D (B, 64, H, W)."""
        f, d = self.features_lowres(x)
        return f, F.interpolate(d, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def forward(
        self,
        x: torch.Tensor,
        centres: torch.Tensor | None = None,
        patch_size: int = PAPER.patch_size,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Global projection (B, 64) and, given window ``centres`` (B, K, 2), local projections (B, K, 64)."""
        f, d = self.features_lowres(x)
        g = self.global_head(style_vector(f, self.use_variance))
        if centres is None:
            return g, None
        # window means of the upsampled D, computed from the low-resolution map (exact)
        local = upsampled_window_mean(d, centres, patch_size, tuple(x.shape[-2:]))
        return g, self.local_head(local)
