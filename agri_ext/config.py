"""CLAWS hyperparameters, each written once with its source."""

from __future__ import annotations

from dataclasses import dataclass

MASKS = ("pixel", "feature", "none")
CONTRASTS = ("within", "all", "supcon")
WITHIN_CLASS_MODES = ("mask", "batch")
EVAL_BRANCHES = ("image", "crop")


@dataclass
class CLAWSConfig:
    """CLAWS settings (Herrera-Gerena et al., 2021). Paper values unless marked otherwise.

    ``mask``: ``"pixel"`` (default, the paper's method: the hard mask ``M`` multiplies the crop view
    ``x_c``), ``"feature"`` (a sigmoid attention MLP on the crop branch's pooled features, rounded to
    {0, 1} with a straight-through gradient: the authors' experimental-code option) or ``"none"``.

    ``contrast``: ``"within"`` (CLAWS: NT-Xent whose negatives come only from the anchor's weak class),
    ``"all"`` (SimCLR: every other sample is a negative) or ``"supcon"`` (supervised SimCLR, Khosla et
    al. 2020, with the weak labels as classes).

    ``within_class``: how ``contrast="within"`` is realised. ``"mask"`` (default) keeps mixed batches
    and drops other-class columns from each anchor's denominator; ``"batch"`` draws class-homogeneous
    batches and uses plain NT-Xent. Both contrast each anchor only with its own class, but they differ:
    in ``"batch"`` an anchor sees up to ``batch_size`` same-class samples while in ``"mask"`` it sees
    about ``batch_size / #classes``, and BatchNorm statistics are per class in ``"batch"`` and over
    mixed classes in ``"mask"``.
    """

    temperature: float = 0.5  # paper: NT-Xent temperature 0.5
    projection_dim: int = 64  # paper: projection Linear(n,n)-ReLU-Linear(n,64), no bias
    lr: float = 3e-4  # paper: Adam, lr 3e-4
    batch_size: int = 128  # paper: batch 128
    epochs: int = 30  # ours: CPU-scale budget (the paper trains far longer on 227k images)
    mask: str = "pixel"
    contrast: str = "within"
    within_class: str = "mask"
    shared_encoder: bool = False  # paper: two separate ResNets, one per view
    arch: str = "tiny"  # ours for CPU; the paper uses a ResNet ("resnet18"/"resnet50" here)
    widths: tuple[int, ...] = (32, 64, 128)  # TinyResNet stage widths (arch="tiny" only)
    image_size: int | None = None  # resize inputs to this side (None: keep)
    crop_scale: tuple[float, float] = (0.2, 1.0)  # x_i random resized crop (SimCLR CIFAR setting)
    # x_c crop area: the paper gives no value; ours keeps most of the plant in the masked crop
    crop_scale_c: tuple[float, float] = (0.5, 1.0)
    jitter_strength: float = 1.0  # paper: colour jitter (0.8, 0.8, 0.8, 0.2) = 0.8 x strength 1
    p_jitter: float = 0.8  # paper
    p_gray: float = 0.2  # paper
    supcon_temperature: float = 0.1  # Khosla et al. 2020, Sec. 4 (supervised SimCLR baseline)
    eval_branch: str = "image"  # ours: embed the raw test images with the full-image encoder
    # ours: a vegetation pixel needs chromatic green g > 0.367 (ExG = 3g - 1 > 0.1) even when Otsu
    # would split lower; without it Otsu splits the soil of a plant-free image into two halves
    min_exg: float = 0.1
    min_mask_fraction: float = 0.005  # ours: smaller masks fall back to the whole image

    def validate(self) -> CLAWSConfig:
        from plugins.errors import UserInputError

        for key, allowed in (
            ("mask", MASKS),
            ("contrast", CONTRASTS),
            ("within_class", WITHIN_CLASS_MODES),
            ("eval_branch", EVAL_BRANCHES),
        ):
            if getattr(self, key) not in allowed:
                raise UserInputError(
                    f"option {key} must be one of {', '.join(allowed)}, got {getattr(self, key)!r}."
                )
        if self.temperature <= 0 or self.supcon_temperature <= 0:
            raise UserInputError("temperatures must be positive.")
        if self.batch_size < 2:
            raise UserInputError(f"batch_size must be at least 2, got {self.batch_size}.")
        return self
