"""Graphs for ARIEL: the embedded default, PyG node data sets, and input checks.

Everything becomes a ``torch_geometric.data.Data`` with ``x`` (N, F) float32, an ``edge_index``
(2, E) without self-loops (undirected unless ``directed``), ``edge_weight`` (E,) when ``weighted``,
and ``y`` (N,) when labels exist. A user's own files (edge list or ``.npz`` adjacency, string
labels, optional features) are read by :mod:`graph_ext.own_data`.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch_geometric.data import Data

from graph_ext.config import NAMED_GRAPHS, PYG_GRAPHS
from plugins.data import check_finite, shared_data_dir
from plugins.data.loaders import ENV_VAR
from plugins.errors import UserInputError

__all__ = [
    "load_graph",
    "prepare_graph",
    "describe_edges",
    "art_philo_science",
    "read_npz_sparse",
    "PYG_DATASETS",
    "pyg_cache_dir",
]

# Sparse features with at most this fraction of non-zeros stay sparse (see prepare_graph).
SPARSE_MAX_DENSITY = 0.1
# The PyG data sets of ARIEL's Table 3 (beside the Planetoid ones of Table 2).
PYG_DATASETS = {k: v for k, v in PYG_GRAPHS.items() if v[0] != "Planetoid"}


def pyg_cache_dir() -> Path:
    """Where ``--set download=true`` lets PyG put what it fetches:
    ``$XDG_CACHE_HOME/contrastive-plugins/pyg`` (``~/.cache/...`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "contrastive-plugins" / "pyg"


def art_philo_science() -> Data:
    """scikit-network's art/philosophy/science Wikipedia graph (30 nodes, 3 classes); features are
    the node-word incidence rows (11 words). The embedded default: shipped by a pip package."""
    from sknetwork.data import art_philo_science as load

    g = load(metadata=True)
    adj = g["adjacency"].tocoo()
    edge_index = torch.from_numpy(np.stack([adj.row, adj.col])).long()
    x = torch.tensor(g["biadjacency"].toarray(), dtype=torch.float32)
    return Data(x=x, edge_index=edge_index, y=torch.tensor(g["labels"], dtype=torch.long))


class _RawMissing(Exception):
    """Raised by an offline data set instead of downloading."""

    def __init__(self, files: list[str]):
        super().__init__(", ".join(files))
        self.files = files


def _pyg_class(key: str, offline: bool) -> Any:
    """The torch_geometric.datasets class of ``key``; ``offline``: a subclass whose ``download``
    raises :class:`_RawMissing` (naming the missing raw files) instead of touching the network."""
    import torch_geometric.datasets as pyg_datasets

    cls = getattr(pyg_datasets, PYG_GRAPHS[key][0])
    if not offline:
        return cls

    class Offline(cls):  # type: ignore[misc, valid-type]
        def download(self) -> None:
            raise _RawMissing([Path(p).name for p in self.raw_paths if not Path(p).exists()])

    Offline.__name__ = Offline.__qualname__ = cls.__name__
    return Offline


def _raw_file_names(key: str) -> list[str]:
    """The raw files PyG expects for ``key`` (probed in an empty temporary root, offline)."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            _pyg_class(key, offline=True)(tmp, PYG_GRAPHS[key][1])
        except _RawMissing as e:
            return e.files
    return []


def read_npz_sparse(path: Path) -> Data:
    """A Shchur et al. (2018) ``.npz`` graph (Amazon, Coauthor) with its features kept sparse.

    Same result as PyG's ``read_npz`` (features binarised, self-loops removed, edges made
    undirected) except that ``x`` is a sparse CSR tensor: PyG densifies it (1.1 GB for
    Coauthor-Physics). Read with ``allow_pickle=False``; nothing is written.
    """
    from torch_geometric.utils import remove_self_loops, to_undirected

    try:
        with np.load(path, allow_pickle=False) as f:
            shape = tuple(int(s) for s in f["attr_shape"])
            crow = torch.from_numpy(f["attr_indptr"].astype(np.int64))
            col = torch.from_numpy(f["attr_indices"].astype(np.int64))
            values = torch.from_numpy((f["attr_data"] > 0).astype(np.float32))
            adj_crow = f["adj_indptr"].astype(np.int64)
            adj_col = torch.from_numpy(f["adj_indices"].astype(np.int64))
            y = torch.from_numpy(f["labels"].astype(np.int64))
    except (OSError, ValueError, KeyError, EOFError) as e:
        raise UserInputError(
            f"graph file {path} is not a readable Amazon/Coauthor .npz ({str(e)[:100]})."
        ) from None
    row = torch.from_numpy(np.repeat(np.arange(len(adj_crow) - 1), np.diff(adj_crow)))
    edge_index, _ = remove_self_loops(torch.stack([row, adj_col]))
    edge_index = to_undirected(edge_index, num_nodes=shape[0])
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
        warnings.simplefilter("ignore", UserWarning)
        x = torch.sparse_csr_tensor(crow, col, values, shape)
    return Data(x=x, edge_index=edge_index, y=y, num_nodes=shape[0])


def _from_raw(key: str, raw_dir: Path) -> Data:
    """PyG data set ``key`` from the raw files in ``raw_dir``. Amazon / Coauthor ``.npz`` files are
    read directly with sparse features (:func:`read_npz_sparse`); the Planetoid ones are processed
    by PyG in a temporary copy, so the shared or user folder is never written to. Never downloads."""
    pyg_name = PYG_GRAPHS[key][1]
    if key in PYG_DATASETS and PYG_GRAPHS[key][0] in ("Amazon", "Coauthor"):
        names = _raw_file_names(key)
        missing = [n for n in names if not (raw_dir / n).is_file()]
        if missing:
            raise UserInputError(
                f"{raw_dir} lacks raw file(s) {', '.join(missing)} of data set '{key}' "
                f"(PyG {PYG_GRAPHS[key][0]} {pyg_name})."
            )
        return read_npz_sparse(raw_dir / names[0])
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(raw_dir, Path(tmp) / pyg_name / "raw")
        try:
            return _pyg_class(key, offline=True)(tmp, pyg_name)[0]
        except _RawMissing as e:
            raise UserInputError(
                f"{raw_dir} lacks raw file(s) {', '.join(e.files)} of data set '{key}' "
                f"(PyG {PYG_GRAPHS[key][0]} {pyg_name})."
            ) from None


def _named_pyg(key: str, download: bool, data_flag: bool = True) -> Data:
    """A named PyG data set: the shared copy, else the download cache, else a download when the
    user consented (``download``); otherwise one sentence saying where to put it (``data_flag``:
    the command also takes ``--data FOLDER``)."""
    family, pyg_name = PYG_GRAPHS[key]
    shared = shared_data_dir(required=False)
    shared_raw = None if shared is None else shared / family.lower() / pyg_name / "raw"
    if shared is not None and family != "Planetoid" and not shared_raw.is_dir():
        shared_raw = shared / "graphs" / family.lower() / pyg_name / "raw"  # ../shared/data/graphs
    if shared_raw is not None and shared_raw.is_dir():
        return _from_raw(key, shared_raw)
    cache = pyg_cache_dir() / family.lower()
    if download:
        return _pyg_class(key, offline=False)(str(cache), pyg_name)[0]  # the user's consent
    if (cache / pyg_name / "raw").is_dir():
        try:
            return _pyg_class(key, offline=True)(str(cache), pyg_name)[0]
        except _RawMissing:
            pass  # an incomplete earlier download: say what to do below
    where = (
        f"{shared_raw} (in the shared data folder; set {ENV_VAR} to use another)"
        if shared_raw is not None
        else f"${ENV_VAR}/{'' if family == 'Planetoid' else 'graphs/'}{family.lower()}/{pyg_name}/raw "
        f"(set {ENV_VAR} to the shared data folder)"
    )
    folder = f"pass --data FOLDER holding {pyg_name}/raw, " if data_flag else ""
    raise UserInputError(
        f"data set '{key}' (PyG {family} {pyg_name}) is not on this machine and is not downloaded "
        f"without consent: put its raw files ({', '.join(_raw_file_names(key))}) in {where}, "
        f"{folder}or add --set download=true to let PyG fetch it."
    )


def _safe_globals() -> list[Any]:
    """The classes a ``torch.save``-d PyG ``Data`` pickles besides tensors (PyG 2.x)."""
    from torch_geometric.data.data import DataEdgeAttr, DataTensorAttr
    from torch_geometric.data.storage import GlobalStorage

    return [DataEdgeAttr, DataTensorAttr, GlobalStorage]


def _load_pt(path: Path) -> Data:
    """A user's ``.pt`` graph, loaded with ``weights_only=True`` (only tensors, plain containers and
    PyG's ``Data`` storage classes are unpickled), checked to one-sentence errors."""
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        name = f" ({found.group(1)})" if found else ""
        raise UserInputError(
            f"graph file {path} holds arbitrary Python objects{name}; refusing to unpickle it "
            "(save a torch_geometric Data or a dict of tensors x, edge_index, y)."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserInputError(
            f"graph file {path} is truncated or corrupt and cannot be loaded ({first[:120]})."
        ) from None
    if isinstance(obj, dict):
        if "edge_index" not in obj:
            raise UserInputError(
                f"graph file {path} holds a dict without 'edge_index'; expected keys x, "
                "edge_index, y (and optional edge_weight)."
            )
        keep = ("x", "edge_index", "y", "edge_weight")
        obj = Data(**{k: v for k, v in obj.items() if k in keep})
    if not isinstance(obj, Data):
        raise UserInputError(
            f"graph file {path} holds a {type(obj).__name__}; expected a torch_geometric Data or a dict."
        )
    for key in ("x", "edge_index", "y", "edge_weight"):
        value = getattr(obj, key, None)
        if value is not None and not isinstance(value, torch.Tensor):
            raise UserInputError(
                f"graph file {path}: {key} is a {type(value).__name__}, expected a tensor."
            )
    if obj.x is not None and obj.x.is_floating_point():
        check_finite(obj.x, f"graph file {path}: node features x")
    return obj


def _raw_folder(path: Path) -> tuple[str, Path] | None:
    """``(key, raw dir)`` of a folder holding ``<Name>/raw`` (or being ``<Name>``) of a PyG data set."""
    for key, (_, pyg_name) in PYG_GRAPHS.items():
        for root in (path, path.parent):
            raw = root / pyg_name / "raw"
            if raw.is_dir() and (root == path or path.name == pyg_name):
                return key, raw
    return None


def load_graph(
    source: str | Path | Data | None = None, download: bool = False, what: str = "--data"
) -> tuple[Data, str]:
    """Load a graph and name it. Nothing is downloaded unless ``download`` is true.

    Args:
        source: ``None`` / ``"art_philo_science"`` (embedded default), ``"karate"`` (PyG KarateClub,
            shipped with PyG), a key of :data:`graph_ext.config.PYG_GRAPHS` (``cora``, ``citeseer``,
            ``pubmed``, ``amazon-computers`` ...: the shared copy ``<shared>/<planetoid|amazon|
            coauthor>/<Name>/raw`` when present, else the download cache), a folder holding
            ``<Name>/raw/`` in PyG's layout, a ``.pt`` file with a ``Data`` or a dict with ``x``,
            ``edge_index`` and optional ``y``, a user's folder (or its ``edges.csv`` /
            ``adjacency.npz``) in the layout of :mod:`graph_ext.own_data`, or a ``Data`` object.
        download: let PyG download a named data set found neither in the shared folder nor in the
            cache (:func:`pyg_cache_dir`); without it, a missing data set is one sentence saying
            where to put it.
        what: how messages name ``source`` (``--data``, ``--set dataset``; ``--set datasets``, for
            a command without ``--data``).

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
    if key in PYG_GRAPHS:
        return _named_pyg(key, download, data_flag=what != "--set datasets"), key
    path = Path(source)
    from graph_ext.own_data import is_own_graph, read_own_graph

    if is_own_graph(path):
        return read_own_graph(path, what), path.stem if path.is_dir() else path.parent.name
    if path.suffix == ".pt":
        if not path.is_file():
            raise UserInputError(f"{what} {path}: graph file does not exist.")
        return _load_pt(path), path.stem
    if path.is_dir():
        found = _raw_folder(path)
        if found is not None:
            return _from_raw(*found), found[0]
    raise UserInputError(
        f"{what} {source!s} is neither a known graph ({', '.join(NAMED_GRAPHS)}), a .pt file, a "
        "folder with edges.csv or adjacency.npz (and optional labels.csv, features.npy), nor a "
        "folder holding <Name>/raw of a known graph in PyG's layout."
    )


def _isolated_only(n: int, edge_index: torch.Tensor) -> bool:
    return n > 1 and (edge_index.numel() == 0 or bool((edge_index[0] == edge_index[1]).all()))


def describe_edges(
    edge_index: torch.Tensor, num_nodes: int, edge_weight: torch.Tensor | None = None
) -> dict[str, int]:
    """What the input edges hold: ``edges`` (distinct ordered pairs without self-loops),
    ``self_loops`` (rows), ``duplicates`` (rows merged into an earlier one), ``directed_edges``
    (distinct pairs ``u -> v`` whose reverse ``v -> u`` is absent) and ``weighted_edges``
    (distinct pairs whose weight, duplicates added up, is not 1)."""
    src, dst = edge_index.long()
    loops = src == dst
    key = src[~loops] * num_nodes + dst[~loops]
    unique, inverse = key.unique(return_inverse=True)
    out = {
        "edges": int(unique.numel()),
        "self_loops": int(loops.sum()),
        "duplicates": int(key.numel() - unique.numel()),
    }
    reverse = (unique % num_nodes) * num_nodes + unique // num_nodes
    out["directed_edges"] = int((~torch.isin(reverse, unique)).sum())
    weighted = 0
    if edge_weight is not None:
        w = torch.zeros(unique.numel(), dtype=torch.float64)
        w.index_add_(0, inverse, edge_weight[~loops].double())
        weighted = int((w != 1).sum())
    out["weighted_edges"] = weighted
    return out


def _check_edge_weight(weight: torch.Tensor, num_edges: int) -> torch.Tensor:
    if tuple(weight.shape) != (num_edges,):
        raise UserInputError(
            f"edge_weight must hold one weight per edge ({num_edges},), got {tuple(weight.shape)}."
        )
    weight = weight.float()
    bad = ~torch.isfinite(weight) | (weight < 0)
    if bad.any():
        raise UserInputError(
            f"{int(bad.sum())} edge weights are negative, NaN or infinite (the first: "
            f"{float(weight[bad][0])}); a GCN's edge weights must be finite and non-negative."
        )
    return weight


def prepare_graph(
    data: Data, normalize_features: bool = False, directed: bool = False, weighted: bool = False
) -> Data:
    """Check and clean a graph for training.

    * edges must be (2, E) integer ids in ``[0, N)`` (:class:`UserInputError` otherwise);
    * a graph of two or more nodes without any edge between distinct nodes (isolated nodes only)
      -> :class:`UserInputError`: a GCN has nothing to propagate and the views nothing to drop;
    * no features -> identity features (N, N), with a warning;
    * NaN / infinite features -> :class:`UserInputError`;
    * sparse (COO/CSR) features at most :data:`SPARSE_MAX_DENSITY` non-zero stay sparse (CSR):
      Coauthor-Physics' 34,493 x 8,415 would be 1.2 GB dense; the sampler selects the rows of each
      subgraph. Denser ones (Amazon's, 35%) are made dense;
    * self-loops are dropped (the GCN gives every node one of weight 1) and duplicate edges merged
      (their weights add up);
    * direction and weights are a choice (:func:`describe_edges` counts them in the input): by
      default the graph is made undirected and unweighted, as the papers do, with one warning
      naming what was dropped; ``directed`` keeps ``edge_index`` as given, ``weighted`` keeps
      ``data.edge_weight`` (finite, non-negative; required then). An undirected weighted graph
      gives each pair the mean of the weights of ``u -> v`` and ``v -> u`` that exist, so an
      edge listed once, or twice with the same weight, keeps its weight;
    * isolated nodes are kept (they get a self-loop in the GCN normalisation);
    * labels below 0 mark unlabelled nodes (left out of the evaluation and counted there);
    * ``normalize_features`` divides each row by its sum (PyG ``NormalizeFeatures`` arithmetic).
    """
    from torch_geometric.utils import coalesce, remove_self_loops, to_undirected

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
    if _isolated_only(n, edge_index):
        raise UserInputError(
            f"the graph's {n} nodes are all isolated (no edge between two distinct nodes); "
            "ARIEL/GRACE need edges to propagate over and to drop."
        )
    weight = data.edge_weight if "edge_weight" in data else None
    if weight is not None:
        weight = _check_edge_weight(weight, edge_index.shape[1])
    elif weighted:
        raise UserInputError(
            "--set weighted=true, but the graph has no edge weights (an edge list needs a "
            "weight column: source,target,weight)."
        )
    _warn_dropped(describe_edges(edge_index, n, weight), directed, weighted)
    x = data.x
    if x is None:
        warnings.warn(
            f"the graph has no node features; using identity features ({n} x {n}).", stacklevel=2
        )
        x = torch.eye(n)
    if x.layout != torch.strided:
        x = _prepare_sparse(x, normalize_features)
        if x.values().numel() > SPARSE_MAX_DENSITY * x.shape[0] * x.shape[1]:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                x = x.to_dense()  # e.g. Amazon-Photo, 35% non-zero: dense products are faster
    else:
        x = check_finite(x.float(), "node features x")
        if normalize_features:
            x = x - x.min()  # same arithmetic as PyG's NormalizeFeatures
            x = x / x.sum(1, keepdim=True).clamp_min(1.0)
    weight = weight if weighted else None
    edge_index, weight = remove_self_loops(edge_index.long(), weight)
    if weight is None:
        edge_index = edge_index if directed else to_undirected(edge_index, num_nodes=n)
        edge_index = coalesce(edge_index, num_nodes=n)  # a no-op after to_undirected
    else:
        edge_index, weight = coalesce(edge_index, weight, num_nodes=n)  # duplicates add up
        if not directed:
            edge_index, weight = to_undirected(edge_index, weight, num_nodes=n, reduce="mean")
    y = data.y
    if y is not None and y.shape[0] != n:
        raise UserInputError(f"y has {y.shape[0]} labels but the graph has {n} nodes.")
    out = Data(x=x, edge_index=edge_index, y=y, num_nodes=n)
    if weight is not None:
        out.edge_weight = weight
    return out


def _warn_dropped(report: dict[str, int], directed: bool, weighted: bool) -> None:
    """The one warning of a default run on a directed or weighted input."""
    dropped = []
    if report["directed_edges"] and not directed:
        dropped.append(
            f"direction ({report['directed_edges']} of its {report['edges']} edges have no "
            "reverse edge; --set directed=true keeps it)"
        )
    if report["weighted_edges"] and not weighted:
        dropped.append(
            f"weights ({report['weighted_edges']} of its {report['edges']} edges weigh other "
            "than 1; --set weighted=true uses them)"
        )
    if dropped:
        what = "undirected" if not directed and report["directed_edges"] else "unweighted"
        if len(dropped) == 2:
            what = "undirected, unweighted"
        warnings.warn(
            f"the graph has {' and '.join(dropped)}; training on the {what} graph, as "
            "GRACE and ARIEL do.",
            stacklevel=3,
        )


def _prepare_sparse(x: torch.Tensor, normalize: bool) -> torch.Tensor:
    """Sparse features as float32 CSR, checked finite, optionally row-normalised (sparsely)."""
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
        warnings.simplefilter("ignore", UserWarning)
        x = x.to(torch.float32)
        x = x if x.layout == torch.sparse_csr else x.coalesce().to_sparse_csr()
        values = check_finite(x.values(), "node features x")
        if normalize:
            lowest = min(float(values.min()), 0.0) if values.numel() else 0.0
            if lowest < 0:
                raise UserInputError(
                    "--set normalize_features=true needs non-negative sparse features "
                    f"(the smallest is {lowest}); densify them or leave the features raw."
                )
            crow = x.crow_indices()
            counts = crow[1:] - crow[:-1]
            sums = torch.zeros(x.shape[0]).index_add_(
                0, torch.repeat_interleave(torch.arange(x.shape[0]), counts), values
            )
            values = values / sums.clamp_min(1.0).repeat_interleave(counts)
        return torch.sparse_csr_tensor(
            x.crow_indices(), x.col_indices(), values, tuple(x.shape), check_invariants=False
        )
