"""DirectCLR's hyperparameters (Jing et al., ICLR 2022), each default once with its source."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DirectCLRConfig"]


@dataclass
class DirectCLRConfig:
    """Hyperparameters; defaults from the paper (ImageNet, ResNet-50) unless marked."""

    d0_fraction: float = 360 / 2048  # paper: d0 = 360 of ResNet-50's 2048; scaled with the width
    temperature: float = 0.1  # paper Sec. 6 / released code
    negatives: str = "cross_view"  # released code; "all" = lightly's NT-Xent form
    projection_dim: int = 128  # simclr mode: SimCLR's 128-d output (Chen et al. 2020, Sec. 5.2)
    optimizer: str = "lars"  # paper: LARS
    base_lr: float = 4.8  # paper: lr 4.8 at batch 4096, scaled linearly with the batch size
    base_batch_size: int = 4096  # the batch size base_lr refers to
    adam_lr: float = 1e-3  # only for optimizer="adam" (CPU-scale alternative, not the paper's)
    weight_decay: float = 1e-6  # paper
    lars_eta: float = 0.001  # LARS trust coefficient (You et al. 2017; Barlow Twins code)
    warmup_fraction: float = 0.1  # paper: 10 warm-up epochs of 100, then cosine
    batch_size: int = 256  # CPU scale (paper: 4096)
    epochs: int = 100  # paper
    blur_p: tuple[float, float] = (1.0, 0.1)  # Barlow-Twins augmentations: blur p=1 / p=0.1
    solarize_p: tuple[float, float] = (0.0, 0.2)  # solarisation only on view 2, p=0.2
    crop_scale: tuple[float, float] = (0.2, 1.0)  # CIFAR-scale crops (paper: 0.08 on ImageNet)
    online_classifier: bool = True  # paper's code logs a linear classifier on detached r
