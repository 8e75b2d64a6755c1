"""SimCLR's hyperparameters (Chen et al., ICML 2020), each default once with its source."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SimCLRConfig"]


@dataclass
class SimCLRConfig:
    """Defaults: the paper's where they fit a CPU, else marked."""

    temperature: float = 0.5  # paper, CIFAR-10 setting (Appendix B.9)
    projection_dim: int = 128  # paper, Sec. 5.2 / Fig. 8
    batch_size: int = 256  # paper uses 256-8192; 256 fits a CPU
    lr: float = 1e-3  # CPU-scale Adam instead of LARS (lr 0.3 x B/256), which needs large batches
    weight_decay: float = 1e-6  # paper (LARS weight decay 1e-6)
    epochs: int = 30
    arch: str = "tiny"  # "tiny" (3-stage ResNet, CPU) or a torchvision ResNet name
    crop_scale: tuple[float, float] = (
        0.2,
        1.0,
    )  # lightly / solo-learn CIFAR default; paper 0.08 on ImageNet
    image_size: int | None = None  # resize inputs to this side (None: keep)
