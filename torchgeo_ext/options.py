"""The ``--set`` keys of ``contrastive-plugins run glcnet`` and ``reproduce glcnet``, each default
written once (Li et al., "Global and Local Contrastive Self-Supervised Learning for Semantic
Segmentation of HR Remote Sensing Images", IEEE TGRS 60, 2022; paper values in
:mod:`torchgeo_ext.config`, CPU-scale values marked as such).

Import-light on purpose (no torch, no torchgeo): ``run glcnet --help`` reads it.
"""

from __future__ import annotations

from plugins.options import Option, OptionSet
from torchgeo_ext.config import PAPER

__all__ = ["OPTIONS", "RUN_OPTIONS", "REPRODUCE_OPTIONS", "OUTPUT_STRIDE"]

OUTPUT_STRIDE = 16
"""DeepLabv3+ output stride: view and window sides must be multiples of it."""

_PATCH_DOC = "16 x size / 224 rounded, at least 3 (the paper's 16-px window at 224 px)"

_COMMON = (
    Option(
        "backbone",
        "str",
        "resnet18",
        "smp encoder of the DeepLabv3+ (paper: resnet50; resnet18 fits a CPU)",
    ),
    Option(
        "patch_size",
        "int",
        None,
        "local window side in view pixels",
        low=1,
        default_doc=_PATCH_DOC,
    ),
    Option("lr", "float", PAPER.lr, "Adam learning rate of the pretraining (paper)", low=0),
)

RUN_OPTIONS = OptionSet(
    _COMMON,
    Option(
        "size",
        "int",
        64,  # CPU scale (paper: 224)
        f"view side in pixels, a multiple of {OUTPUT_STRIDE} (paper: 224)",
        demo_default=48,
        low=OUTPUT_STRIDE,
    ),
    Option(
        "steps",
        "int",
        200,  # CPU scale
        "pretraining optimiser steps (--epochs N overrides)",
        demo_default=6,
        low=1,
    ),
    Option(
        "batch_size",
        "int",
        32,  # CPU scale (paper: 256)
        "images per step (paper: 256)",
        demo_default=6,
        low=2,
    ),
    Option(
        "rgb_bands",
        "int",
        None,
        "red, green, blue band indices for the colour jitter; none: no colour jitter",
        many=True,
        nullable=True,
        low=0,
        length=3,
        default_doc="2,1,0 on the embedded Sentinel-2 tile; 0,1,2 for a GeoTIFF of 3+ bands, else none",
    ),
    Option("clusters", "int", 5, "k-means classes of the label-free class map", low=2),
    Option(
        "bands",
        "str",
        None,
        "bands of --data to use: 1-based numbers or band names (e.g. 1,2,3 or red,green,blue)",
        many=True,
        nullable=True,
        default_doc="all bands",
    ),
    Option(
        "nodata",
        "float",
        None,
        "nodata value of --data files that declare none (nodata pixels are skipped, left out "
        "of the stretch and written as 255 in the class map)",
        nullable=True,
        default_doc="the files' own nodata value",
    ),
)

REPRODUCE_OPTIONS = OptionSet(
    _COMMON,
    Option("finetune_lr", "float", 1e-3, "Adam learning rate of the fine-tuning", low=0),
    Option(
        "scale",
        "float",
        0.125,
        "resize the rs_seg scenes by this factor first (reduced scale for a CPU)",
        low=0.01,
        high=1,
    ),
    Option(
        "source_size",
        "int",
        32,
        "side of the training windows cut from the scenes",
        low=OUTPUT_STRIDE,
    ),
    Option(
        "size",
        "int",
        32,
        f"view side of the pretraining, a multiple of {OUTPUT_STRIDE}",
        low=OUTPUT_STRIDE,
    ),
    Option(
        "window",
        "int",
        32,
        f"sliding-window side of the evaluation, a multiple of {OUTPUT_STRIDE} "
        "(32 at scale 0.125 covers the paper's 256)",
        low=OUTPUT_STRIDE,
    ),
    Option(
        "stride",
        "int",
        16,
        "sliding-window step of the evaluation, at most window (paper: half the window)",
        low=1,
    ),
    Option("batch_size", "int", 8, "images per step of every arm", low=2),
    Option("pretrain_steps", "int", 200, "optimiser steps of each pretraining", low=1),
    Option("finetune_steps", "int", 80, "optimiser steps of each fine-tuning", low=1),
    Option(
        "fractions",
        "float",
        [0.01, 0.1],
        "fractions of the labelled training windows used for fine-tuning",
        many=True,
        low=0.0001,
        high=1,
    ),
    Option(
        "seeds",
        "int",
        None,
        "seeds; everything is repeated per seed and reported as mean +- std",
        many=True,
        nullable=True,
        low=0,
        default_doc="--seed and the next two",
    ),
)

OPTIONS = {"run": RUN_OPTIONS, "reproduce": REPRODUCE_OPTIONS}
