"""GLCNet hyperparameters, written once (Li et al., "Global and Local Contrastive Self-Supervised
Learning for Semantic Segmentation of HR Remote Sensing Images", IEEE TGRS 60, 2022)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GLCNetConfig:
    """Paper defaults (Sec. III and IV-B of the paper unless noted)."""

    model: str = "deeplabv3+"  # paper: DeepLabv3+
    backbone: str = "resnet50"  # paper: ResNet-50, output stride 16
    in_channels: int = 4  # ISPRS Potsdam RGB + IR
    patch_size: int = 16  # local window side at input 224 (paper, Sec. IV-B); see docs for 48
    patch_num: int = 4  # matched window pairs per image (paper)
    lam: float = 0.5  # weight of the global loss: lam * L_g + (1 - lam) * L_l (paper, eq. 8)
    temperature: float = 0.5  # NT-Xent temperature for both branches (paper / reference code)
    positive_in_denominator: bool = False  # reference code's NT-Xent: negatives-only denominator
    style_dim: int = 256  # global head: Linear(2c, 256)-ReLU-Linear(256, 64)
    global_out_dim: int = 64
    local_channels: int = 64  # decoder output D: 64 channels at input resolution
    local_hidden_dim: int = 64  # local head: Linear(64, 64)-ReLU-Linear(64, 64)
    local_out_dim: int = 64
    lr: float = 1e-3  # Adam (paper)
    betas: tuple[float, float] = (0.9, 0.99)  # reference code's Adam betas
    weight_decay: float = 1e-5  # reference code
    min_lr: float = 4e-8  # cosine schedule floor (reference code)
    batch_size: int = 256  # paper
    max_epochs: int = 400  # paper
    size: int = 224  # view size (paper)
    crop_scale: tuple[float, float] = (0.4, 1.0)  # random resized crop area range (reference code)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    p_rot90: float = 0.8  # view 2 only
    p_color: float = 0.8  # view 2 only
    p_gray: float = 0.1  # view 2 only
    p_blur: float = 0.5  # view 2 only


PAPER = GLCNetConfig()
