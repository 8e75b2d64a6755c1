"""SuperCon (Chen, Zhuang, Chang, 2022): two-stage supervised contrastive learning for imbalanced
skin-lesion classification.

Names are imported lazily so that importing the package does not import torch/MONAI.
"""

from __future__ import annotations

from plugins.lazy import lazy_exports

_LAZY = {
    "SuperConConfig": "monai_ext.supercon.config",
    "SuperConNet": "monai_ext.supercon.model",
    "build_encoder": "monai_ext.supercon.model",
    "AsymmetricViews": "monai_ext.supercon.augment",
    "stage1_loss": "monai_ext.supercon.train",
    "train_stage1": "monai_ext.supercon.train",
    "train_stage2": "monai_ext.supercon.train",
    "train_baseline": "monai_ext.supercon.train",
    "evaluate": "monai_ext.supercon.train",
    "split_indices": "monai_ext.supercon.data",
    "find_duplicates": "monai_ext.supercon.data",
    "deduplicate": "monai_ext.supercon.data",
    "resolve_positive": "monai_ext.supercon.data",
    "split_summary": "monai_ext.supercon.data",
    "check_split": "monai_ext.supercon.data",
    "load_isic_csv": "monai_ext.supercon.data",
    "class_balanced_sampler": "monai_ext.supercon.data",
}

__all__ = list(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
