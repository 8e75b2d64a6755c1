"""Multi-task, multi-domain MR segmentation (Boutillon et al., MICCAI 2021).

Names are imported lazily so that importing the package does not import MONAI.
"""

from __future__ import annotations

from plugins.lazy import lazy_exports

_LAZY = {
    "MultiDomainConfig": "monai_ext.multidomain.config",
    "MultiDomainUNet": "monai_ext.multidomain.model",
    "MultiDomainLoss": "monai_ext.multidomain.loss",
    "domain_regulariser": "monai_ext.multidomain.loss",
    "DomainBalancedBatchSampler": "monai_ext.multidomain.sampler",
    "DomainRow": "monai_ext.multidomain.domains",
    "ModelCard": "monai_ext.multidomain.domains",
    "read_domains": "monai_ext.multidomain.domains",
}

__all__ = list(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
