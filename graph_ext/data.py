"""Graphs for ARIEL: the embedded default, PyG node data sets, and input checks.

Everything becomes a ``torch_geometric.data.Data`` with ``x`` (N, F) float32, an undirected
``edge_index`` (2, E) without self-loops, and ``y`` (N,) when labels exist.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import Data

from plugins.data import check_finite, shared_path
from plugins.errors import UserInputError

__all__ = ["load_graph", "prepare_graph", "art_philo_science", "PYG_DATASETS"]

_PLANETOID = {"cora": "Cora", "citeseer": "CiteSeer", "pubmed": "PubMed"}
# Other PyG node data sets ARIEL's paper uses (downloaded by PyG on a user's machine).
PYG_DATASETS = {
    "amazon-computers": ("Amazon", "Computers"),
    "amazon-photo": ("Amazon", "Photo"),
    "coauthor-cs": ("Coauthor", "CS"),
    "coauthor-physics": ("Coauthor", "Physics"),
}
_CACHE = Path.home() / ".cache" / "contrastive-plugins" / "pyg"


def art_philo_science() -> Data:
    """scikit-network's art/philosophy/science Wikipedia graph (30 nodes, 3 classes); features are
    the node-word incidence rows (11 words). The embedded default: shipped by a pip package."""
    from sknetwork.data import art_philo_science as load

    g = load(metadata=True)
    adj = g["adjacency"].tocoo()
    edge_index = torch.from_numpy(np.stack([adj.row, adj.col])).long()
    x = torch.tensor(g["biadjacency"].toarray(), dtype=torch.float32)
    return Data(x=x, edge_index=edge_index, y=torch.tensor(g["labels"], dtype=torch.long))


def _planetoid(name: str, raw_root: Path | None) -> Data:
    """Planetoid via PyG's own class; shared/user raw files are processed in a temporary copy."""
    from torch_geometric.datasets import Planetoid

    pyg_name = _PLANETOID[name]
    if raw_root is None:
        return Planetoid(str(_CACHE / "planetoid"), pyg_name)[0]  # PyG downloads it
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(raw_root / pyg_name / "raw", Path(tmp) / pyg_name / "raw")
        return Planetoid(tmp, pyg_name)[0]


def load_graph(source: str | Path | Data | None = None) -> tuple[Data, str]:
    """Load a graph and name it.

    Args:
        source: ``None`` / ``"art_philo_science"`` (embedded default), ``"karate"`` (PyG KarateClub),
            ``"cora"`` / ``"citeseer"`` / ``"pubmed"`` (Planetoid: the shared copy when present, else
            PyG downloads it), a key of :data:`PYG_DATASETS`, a folder holding ``<Name>/raw/`` in
            PyG's Planetoid layout, a ``.pt`` file with a ``Data`` or a dict with ``x``,
            ``edge_index`` and optional ``y``, or a ``Data`` object.

    Returns:
        ``(data, name)``; ``data`` is not yet checked (see :func:`prepare_graph`).
    """
    if isinstance(source, Data):
        return source, "graph"
    if source is None or str(source).lower() in ("art_philo_science", "default"):
        return art_philo_science(), "art_philo_science"
    key = str(source).lower()
    if key in ("karate", "karateclub"):
        from torch_geometric.datasets import KarateClub

        return KarateClub()[0], "karate"
    if key in _PLANETOID:
        shared = shared_path("planetoid", required=False)
        has_raw = shared is not None and (shared / _PLANETOID[key] / "raw").is_dir()
        return _planetoid(key, shared if has_raw else None), key
    if key in PYG_DATASETS:
        import torch_geometric.datasets as pyg_datasets

        cls, name = PYG_DATASETS[key]
        return getattr(pyg_datasets, cls)(str(_CACHE / cls.lower()), name)[0], key
    path = Path(source)
    if path.is_file() and path.suffix == ".pt":
        obj = torch.load(path, weights_only=False)
        if isinstance(obj, dict):
            if "edge_index" not in obj:
                raise UserInputError(
                    f"{path} holds a dict without 'edge_index'; expected keys x, edge_index, y."
                )
            obj = Data(**{k: v for k, v in obj.items() if k in ("x", "edge_index", "y")})
        if not isinstance(obj, Data):
            raise UserInputError(
                f"{path} holds a {type(obj).__name__}; expected a torch_geometric Data or a dict."
            )
        return obj, path.stem
    if path.is_dir():
        for name in _PLANETOID.values():
            for root in (path, path.parent):
                if (root / name / "raw").is_dir() and (root == path or path.name == name):
                    return _planetoid(name.lower(), root), name.lower()
    choices = ", ".join(["art_philo_science", "karate", *_PLANETOID, *PYG_DATASETS])
    raise UserInputError(
        f"--data {source!s} is neither a known graph ({choices}), a .pt file, nor a folder with "
        "<Cora|CiteSeer|PubMed>/raw in PyG's Planetoid layout."
    )


def prepare_graph(data: Data, normalize_features: bool = False) -> Data:
    """Check and clean a graph for training.

    * edges must be (2, E) integer ids in ``[0, N)`` (:class:`UserInputError` otherwise);
    * no features -> identity features (N, N), with a warning;
    * NaN / infinite features -> :class:`UserInputError`;
    * the graph is made undirected and self-loops are dropped (the attack flips symmetric pairs);
    * isolated nodes are kept (they get a self-loop in the GCN normalisation);
    * ``normalize_features`` divides each row by its sum (PyG ``NormalizeFeatures`` arithmetic).
    """
    from torch_geometric.utils import remove_self_loops, to_undirected

    edge_index = data.edge_index
    if edge_index is None or edge_index.ndim != 2 or edge_index.shape[0] != 2:
        shape = None if edge_index is None else tuple(edge_index.shape)
        raise UserInputError(f"edge_index must have shape (2, E), got {shape}.")
    if edge_index.dtype.is_floating_point:
        raise UserInputError(
            f"edge_index must hold integer node ids, got dtype {edge_index.dtype}."
        )
    n = data.num_nodes if data.x is None else data.x.shape[0]
    if n is None or n == 0:
        raise UserInputError("the graph has no nodes (no x and no num_nodes).")
    if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= n):
        raise UserInputError(
            f"edge_index points outside the node range: ids span [{int(edge_index.min())}, "
            f"{int(edge_index.max())}] but the graph has {n} nodes (ids 0..{n - 1})."
        )
    x = data.x
    if x is None:
        warnings.warn(
            f"the graph has no node features; using identity features ({n} x {n}).", stacklevel=2
        )
        x = torch.eye(n)
    x = check_finite(x.float(), "node features x")
    if normalize_features:
        x = x - x.min()  # same arithmetic as PyG's NormalizeFeatures
        x = x / x.sum(1, keepdim=True).clamp_min(1.0)
    edge_index = to_undirected(remove_self_loops(edge_index.long())[0], num_nodes=n)
    y = data.y
    if y is not None and y.shape[0] != n:
        raise UserInputError(f"y has {y.shape[0]} labels but the graph has {n} nodes.")
    return Data(x=x, edge_index=edge_index, y=y, num_nodes=n)
