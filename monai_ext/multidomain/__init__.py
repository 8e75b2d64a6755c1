"""Multi-task, multi-domain MR segmentation (Boutillon et al., MICCAI 2021).

Names are imported lazily so that importing the package does not import MONAI.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "MultiDomainConfig": "monai_ext.multidomain.config",
    "MultiDomainUNet": "monai_ext.multidomain.model",
    "MultiDomainLoss": "monai_ext.multidomain.loss",
    "domain_regulariser": "monai_ext.multidomain.loss",
    "DomainBalancedBatchSampler": "monai_ext.multidomain.sampler",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'monai_ext.multidomain' has no attribute {name!r}")
