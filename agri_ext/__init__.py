"""CLAWS (Herrera-Gerena et al., 2021): SimCLR with a hard attention mask and contrast within weakly
labelled class clusters, for crop images.

Imports are lazy (module ``__getattr__``) so that ``agri_ext.spec`` loads without torch.
"""

from __future__ import annotations

from plugins.lazy import lazy_exports

__all__ = [
    "CLAWS",
    "CLAWSConfig",
    "CLAWSDataModule",
    "CLAWSTask",
    "excess_green_mask",
    "within_class_nt_xent",
]

_WHERE = {
    "CLAWS": "agri_ext.model",
    "CLAWSConfig": "agri_ext.config",
    "CLAWSDataModule": "agri_ext.datamodule",
    "CLAWSTask": "agri_ext.task",
    "excess_green_mask": "agri_ext.mask",
    "within_class_nt_xent": "agri_ext.loss",
}


__getattr__, __dir__ = lazy_exports(__name__, _WHERE)
