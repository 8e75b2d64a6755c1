"""HCSC's hyperparameters (Guo et al., CVPR 2022, on MoCo v2), each default once with its source."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["HCSCConfig"]


@dataclass
class HCSCConfig:
    """Defaults are the paper's / reference code's ImageNet values (HCSC Sec. 4.1, MoCo v2)."""

    dim: int = 128  # MoCo v2 projection output
    queue_size: int = 16384  # HCSC Sec. 4.1 (MoCo v2 uses 65536)
    momentum: float = 0.999  # MoCo v2 key-encoder EMA
    temperature: float = 0.2  # MoCo v2 / HCSC T
    lr: float = 0.03  # MoCo v2 base lr, scaled by batch / 256
    sgd_momentum: float = 0.9  # MoCo v2
    weight_decay: float = 1e-4  # MoCo v2
    batch_size: int = 256  # HCSC Sec. 4.1
    epochs: int = 200  # HCSC single-crop headline setting
    warmup_epochs: int = 20  # HCSC code: plain MoCo before clustering starts
    cluster_sizes: tuple[int, ...] = (3000, 2000, 1000)  # HCSC Sec. 4.1 (ImageNet)
    kmeans_iters: int = 20  # PCL/HCSC faiss niter
    kmeans_restarts: int = 5  # PCL's faiss nredo
    instance_selection: bool = True  # HCSC eq. 4-5
    prototype_selection: bool = True  # HCSC eq. 6-7
    prototype_loss: bool = True  # the L_proto term
    reference_semantics: bool = False  # True: the authors' code (zeroed logits, off-by-one top id)
    cache_queue_probs: bool = True  # False recomputes queue x prototype softmax every step
    multi_crop: bool = False  # HCSC multi-crop: 2 global + 4 local crops
    local_crop_sizes: tuple[int, ...] = (192, 160, 128, 96)  # HCSC, relative to 224 global crops
    optimizer: str = "sgd"  # "sgd" (paper) or "adam" (lr 1e-3, our CPU-scale runs)
    arch: str = "tiny"  # encoder: "tiny" or a torchvision ResNet name (paper: resnet50)
    crop_scale: tuple[float, float] = (0.2, 1.0)  # MoCo v2 RandomResizedCrop scale
    image_size: int | None = None  # resize inputs (None: keep)
