"""SuperCon hyperparameters, each written once with its source.

Chen, Zhuang, Chang, "SuperCon: Supervised Contrastive Learning for Imbalanced Skin Lesion
Classification", 2022 (Sec. 3-4). Values the paper does not state come from the SupCon reference
setting (Khosla et al., NeurIPS 2020) and say so.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SuperConConfig:
    # encoder: ResNet-50 in the paper; "resnet18" / "tiny" (plugins.backbones) for CPU runs
    arch: str = "resnet50"
    # head Linear(d, d)-ReLU-Linear(d, 128) then L2 norm (paper Sec. 3.1)
    proj_dim: int = 128
    # SupCon temperature and base temperature (paper Sec. 4.1)
    temperature: float = 0.07
    base_temperature: float = 0.07
    # stage 1: SGD lr 0.003, momentum 0.9, weight decay 5e-5, 100 epochs, batch 128 (paper Sec. 4.1)
    stage1_epochs: int = 100
    batch_size: int = 128
    lr1: float = 0.003
    momentum: float = 0.9
    weight_decay: float = 5e-5
    # step decay x0.1 every third of training (paper Sec. 4.1)
    lr_decay: float = 0.1
    lr_steps: int = 3
    # stage 2: frozen encoder, linear classifier, CE, SGD lr 5e-4, 5 epochs (paper Sec. 4.1)
    stage2_epochs: int = 5
    lr2: float = 5e-4
    # strong view: colour jitter 0.8/0.8/0.8/0.2 with p=0.3, grayscale p=0.2, flip, blur p=0.2
    # (paper Sec. 3.2); crop scale (0.2, 1) is the SupCon reference RandomResizedCrop range
    jitter_strength: float = 1.0  # brightness/contrast/saturation = 0.8 * strength
    p_jitter: float = 0.3
    p_gray: float = 0.2
    p_blur: float = 0.2
    p_flip: float = 0.5
    crop_scale: tuple[float, float] = (0.2, 1.0)
    # input side: 224 (ImageNet-style ResNet-50 input used for ISIC 2020 in the paper)
    image_size: int = 224
    # focal-loss baseline: gamma 2 (Lin et al., ICCV 2017 default)
    focal_gamma: float = 2.0
    # stage-2 encoder mode: "eval" (faithful: frozen features, BN statistics untouched) is the
    # default; "train" reproduces the reference code, which leaves BatchNorm in train mode so its
    # running statistics drift while the "frozen" encoder is used.
    stage2_encoder_mode: str = "eval"
