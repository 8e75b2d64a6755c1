"""HCSC: Hierarchical Contrastive Selective Coding (Guo, Xu, Zhang, Chen, Tang, Qiao, CVPR 2022), on
top of MoCo v2, without faiss.

Files: ``config.py`` (hyperparameters), ``kmeans.py`` (torch k-means, hierarchy, concentration), ``loss.py`` (selective InfoNCE and
prototype losses), ``model.py`` (the model and its queue cache), ``train.py`` (the epoch loop),
``task.py`` (the Lightning task), ``run.py`` (command functions, plots, reproduction), ``spec.py`` (registry).
Names are imported lazily, so that the registry's ``spec`` does not import torch.
"""

from plugins.lazy import lazy_exports

_EXPORTS = {
    "HCSCTask": "plugins.methods.hcsc.task",
    "IndexedDataset": "plugins.methods.hcsc.task",
    "ClusterResult": "plugins.methods.hcsc.kmeans",
    "hierarchical_kmeans": "plugins.methods.hcsc.kmeans",
    "cluster_concentration": "plugins.methods.hcsc.kmeans",
    "instance_keep_probability": "plugins.methods.hcsc.loss",
    "prototype_keep_probability": "plugins.methods.hcsc.loss",
    "prototype_parent_probs": "plugins.methods.hcsc.loss",
    "sample_keep": "plugins.methods.hcsc.loss",
    "selective_info_nce": "plugins.methods.hcsc.loss",
    "selective_info_nce_levels": "plugins.methods.hcsc.loss",
    "prototype_nce": "plugins.methods.hcsc.loss",
    "HCSCConfig": "plugins.methods.hcsc.config",
    "HCSC": "plugins.methods.hcsc.model",
    "TrainHistory": "plugins.methods.hcsc.train",
    "train_hcsc": "plugins.methods.hcsc.train",
    "key_features": "plugins.methods.hcsc.train",
    "selection_stats": "plugins.methods.hcsc.train",
    "cpu_config": "plugins.methods.hcsc.run",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
