"""Hyperparameters of the multi-domain method, written once.

Sources: Boutillon et al., MICCAI 2021 (B21) and the issue that specifies this reimplementation
(ISSUE, which fixes values the paper leaves to its text). CPU settings for the reduced reproduction
live in ``run.py`` and are reported as deviations there.
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
