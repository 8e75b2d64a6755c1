"""MONAI extensions: domain-specific batch norm, the multi-domain MR segmentation method and SuperCon.

Names are imported lazily so that ``import monai_ext`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "DomainSpecificBatchNorm": "monai_ext.dsbn",
    "convert_to_dsbn": "monai_ext.dsbn",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'monai_ext' has no attribute {name!r}")
