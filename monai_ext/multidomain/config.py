"""Hyperparameters of the multi-domain method, written once.

Sources: Boutillon et al., MICCAI 2021 (B21) and the issue that specifies this reimplementation
(ISSUE, which fixes values the paper leaves to its text). The CPU-sized settings of the reduced
reproduction (:class:`Settings`, deviations from the paper) live here too, so that the command's
``--set`` options (``monai_ext.multidomain.run.OPTIONS``) are declared without importing MONAI.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class MultiDomainConfig:
    # B21 Sec. 2: a 2-D U-Net on slices; 3-D is an option (ISSUE).
    spatial_dims: int = 2
    # MONAI BasicUNet's default widths; B21 uses a standard U-Net of this shape.
    features: tuple[int, ...] = (32, 32, 64, 128, 256, 32)
    # embedding for the regulariser: GAP(bottleneck) -> MLP -> L2 norm (ISSUE).
    embedding_dim: int = 128
    embedding_hidden: int = 256
    # total loss sum_d DiceCE_d + lambda * L_con, lambda = 0.1 (ISSUE).
    lam: float = 0.1
    # "supcon" (Khosla et al., t = 0.1) or "margin" (Hadsell et al., m = 1.0) or "none" (ISSUE / B21).
    regulariser: str = "supcon"
    temperature: float = 0.1
    margin: float = 1.0
    # Adam, lr 1e-3 (B21 trains with Adam; the rate is our choice, the paper's text does not fix it here).
    lr: float = 1e-3
    weight_decay: float = 0.0
    # every batch holds every domain (ISSUE: domain-balanced sampler); per-domain share of the batch.
    samples_per_domain: int = 4


_C = MultiDomainConfig()
# the baselines and the method of Boutillon et al., MICCAI 2021, Sec. 3 (see train.build)
CONFIGS = ("per_domain", "joint", "md", "md_supcon", "md_margin")
# opt-in ablation (``--set configs=...``): the multi-domain model with one shared BN, per-domain heads
ABLATIONS = ("md_shared_bn",)
# BN statistics used at test time (Settings.test_bn)
TEST_BN = ("running", "adapt")


@dataclass
class Settings:
    """CPU-sized settings of the reduced reproduction (deviations from the paper, see docs)."""

    # side of the resized 2-D slices (four poolings of the U-Net: a multiple of 16)
    size: int = 64
    # the last width feeds every domain's head: at 8 the shared model lost the small Colin
    # structures (mean Dice 0.563 vs 0.694 per-domain at 10% labels), at 32 it did not
    features: tuple[int, ...] = (8, 8, 16, 32, 64, 32)
    embedding_dim: int = 32
    embedding_hidden: int = 64
    steps: int = 300
    samples_per_domain: int = 4
    lr: float = _C.lr  # Adam
    lam: float = _C.lam
    temperature: float = _C.temperature
    margin: float = _C.margin
    augment_copies: int = 2
    # "running": BN statistics from training, as in the paper; "adapt": re-estimated on each
    # domain's test slices before scoring (AdaBN, see train.adapt_bn_statistics), for every config
    test_bn: str = "running"
