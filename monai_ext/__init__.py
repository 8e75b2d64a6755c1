"""MONAI extensions: domain-specific batch norm, the multi-domain MR segmentation method and SuperCon.

Names are imported lazily so that ``import monai_ext`` stays cheap.
"""

from __future__ import annotations

from plugins.lazy import lazy_exports

_LAZY = {
    "DomainSpecificBatchNorm": "monai_ext.dsbn",
    "convert_to_dsbn": "monai_ext.dsbn",
}

__all__ = list(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
