"""ARIEL (Feng et al., WWW 2022) and its GRACE baseline on PyTorch Geometric.

Imports are lazy (module ``__getattr__``) so that loading the registry entry (``graph_ext.spec``)
never imports torch_geometric.
"""

from __future__ import annotations

from plugins.lazy import lazy_exports

_EXPORTS = {
    "ARIEL": "graph_ext.model",
    "ARIELConfig": "graph_ext.config",
    "grace_loss": "graph_ext.loss",
    "info_regularizer": "graph_ext.loss",
    "pgd_adversarial_view": "graph_ext.attack",
    "project_capped_simplex": "graph_ext.attack",
    "normalized_adjacency": "graph_ext.adjacency",
    "evaluate_node_embeddings": "graph_ext.evaluate",
    "load_graph": "graph_ext.data",
    "read_own_graph": "graph_ext.own_data",
    "predict_embeddings": "graph_ext.predict",
    "prepare_graph": "graph_ext.data",
    "train": "graph_ext.train",
}

__all__ = list(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
