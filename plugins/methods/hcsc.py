"""HCSC: Hierarchical Contrastive Selective Coding (Guo, Xu, Zhang, Chen, Tang, Qiao, "HCSC:
Hierarchical Contrastive Selective Coding", CVPR 2022), on top of MoCo v2, without faiss.

Public names: :class:`HCSC` (model), :class:`HCSCConfig`, :func:`hierarchical_kmeans`,
:class:`ClusterResult`, :func:`cluster_concentration`, :func:`train_hcsc`, and the CLI functions
:func:`run` / :func:`reproduce` (``contrastive-plugins run|reproduce hcsc``).

Files: ``hcsc_kmeans.py`` (torch k-means, hierarchy, concentration), ``hcsc_loss.py`` (selective
InfoNCE and prototype losses), ``hcsc_model.py`` (the model and its queue cache), ``hcsc_train.py``
(the epoch loop), ``hcsc_run.py`` (CLI functions, plots, reproduction).
"""

from plugins.methods.hcsc_kmeans import (
    ClusterResult,
    cluster_concentration,
    hierarchical_kmeans,
    kmeans,
    scaled_cluster_sizes,
)
from plugins.methods.hcsc_loss import (
    instance_keep_probability,
    prototype_keep_probability,
    prototype_nce,
    prototype_parent_probs,
    selective_info_nce,
)
from plugins.methods.hcsc_model import HCSC, HCSCConfig
from plugins.methods.hcsc_run import reproduce, run
from plugins.methods.hcsc_train import TrainHistory, key_features, train_hcsc

__all__ = [
    "HCSC",
    "HCSCConfig",
    "ClusterResult",
    "hierarchical_kmeans",
    "kmeans",
    "cluster_concentration",
    "scaled_cluster_sizes",
    "selective_info_nce",
    "prototype_nce",
    "instance_keep_probability",
    "prototype_keep_probability",
    "prototype_parent_probs",
    "train_hcsc",
    "TrainHistory",
    "key_features",
    "run",
    "reproduce",
]
