"""CLAWS (Herrera-Gerena et al., 2021): SimCLR with a hard attention mask and contrast within weakly
labelled class clusters, for crop images.

Imports are lazy (module ``__getattr__``) so that ``agri_ext.spec`` loads without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["CLAWS", "CLAWSConfig", "excess_green_mask", "within_class_nt_xent"]

_WHERE = {
    "CLAWS": "agri_ext.model",
    "CLAWSConfig": "agri_ext.config",
    "excess_green_mask": "agri_ext.mask",
    "within_class_nt_xent": "agri_ext.loss",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'agri_ext' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
