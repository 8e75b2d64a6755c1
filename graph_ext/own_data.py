"""A user's own graph from plain files, without writing a ``Data`` object (issue 21).

Layout of ``--data FOLDER`` (``--data FOLDER/edges.csv`` or ``FOLDER/adjacency.npz`` is the same)::

    edges.csv       header source,target[,weight]; one row per edge source -> target; node names
                    are any text; duplicate rows add up their weights; weights finite and >= 0
    adjacency.npz   instead of edges.csv: scipy.sparse.save_npz of a square (N, N) matrix with
                    A[i, j] = weight of the edge i -> j; the nodes are named 0 .. N-1
    labels.csv      optional; header node,label; string labels; an empty label = unlabelled
    features.npy    optional; (N, F) numbers, one row per node in the node order below
    features.csv    optional, instead of features.npy; header node,<feature names...>, every node
                    once, matched by name (any row order)

Node order (the rows of ``features.npy`` and of the embeddings ``predict ariel`` writes, with
``nodes.csv`` naming them): with ``edges.csv``, the rows of ``labels.csv`` in file order, then
the nodes that appear only in ``edges.csv``, in order of first appearance; with
``adjacency.npz``, the row numbers 0 .. N-1 (``labels.csv`` names nodes by these numbers).

An edge may name a node that ``labels.csv`` does not list: it is kept as an unlabelled node,
embedded but left out of the evaluation, and counted in the run's data summary. Class ``k`` is the
``k``-th distinct label in sorted order. Without features, ``--set features=identity|degree``
builds them (:func:`structural_features`); the default is identity features, with a warning.

Everything wrong in these files is one sentence naming the file (and line).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import Data

from plugins.errors import UserInputError

__all__ = [
    "DEGREE_CAP",
    "is_own_graph",
    "read_own_graph",
    "structural_features",
    "data_summary",
    "summary_lines",
]

EDGES, ADJACENCY, LABELS = "edges.csv", "adjacency.npz", "labels.csv"
FEATURES_NPY, FEATURES_CSV = "features.npy", "features.csv"
# degree one-hot: degrees 0 .. DEGREE_CAP, larger degrees share the last column
DEGREE_CAP = 64


def _folder(path: Path) -> Path:
    return path if path.is_dir() else path.parent


def is_own_graph(path: Path) -> bool:
    """Whether ``path`` is a folder with ``edges.csv`` / ``adjacency.npz``, or one of those files
    (or any ``.csv`` / ``.npz`` file, read as them)."""
    if path.is_dir():
        return (path / EDGES).is_file() or (path / ADJACENCY).is_file()
    return path.suffix.lower() in (".csv", ".npz")


def _rows(path: Path, expected: tuple[str, ...], optional: int = 0) -> tuple[list[str], list]:
    """Header and ``(line, cells)`` rows of a CSV whose header starts with ``expected`` (its last
    ``optional`` names may be missing); blank lines are skipped."""
    if not path.is_file():
        raise UserInputError(f"{path} does not exist.")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            lines = list(csv.reader(f))
    except (UnicodeDecodeError, csv.Error) as e:
        raise UserInputError(f"{path} is not a readable UTF-8 CSV file ({e}).") from None
    rows = [
        (i + 1, [c.strip() for c in r]) for i, r in enumerate(lines) if any(c.strip() for c in r)
    ]
    if not rows:
        raise UserInputError(f"{path} is empty; expected a header {','.join(expected)}.")
    header = [c.lower() for c in rows[0][1]]
    need = expected[: len(expected) - optional]
    if tuple(header[: len(need)]) != need or (
        len(header) > len(need) and header[len(need) :] != list(expected[len(need) : len(header)])
    ):
        raise UserInputError(
            f"{path} must have the header {','.join(expected)}"
            f"{' (the last column optional)' if optional else ''}, got {','.join(rows[0][1])}."
        )
    for line, cells in rows[1:]:
        if len(cells) != len(header):
            raise UserInputError(
                f"{path} line {line} has {len(cells)} columns; the header has {len(header)} "
                f"({','.join(header)})."
            )
    return header, rows[1:]


def _number(text: str, path: Path, line: int, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UserInputError(f"{path} line {line}: {what} {text!r} is not a number.") from None
    if not math.isfinite(value):
        raise UserInputError(f"{path} line {line}: {what} is {text}, not a finite number.")
    return value


def _read_labels(path: Path) -> dict[str, str]:
    """``labels.csv`` as {node: label} in file order (label ``""``: unlabelled)."""
    _, rows = _rows(path, ("node", "label"))
    out: dict[str, str] = {}
    first: dict[str, int] = {}
    for line, (node, label) in rows:
        if not node:
            raise UserInputError(f"{path} line {line} has an empty node name.")
        if node in out:
            raise UserInputError(
                f"{path} lists node {node!r} twice (lines {first[node]} and {line})."
            )
        out[node], first[node] = label, line
    return out


def _read_edge_list(path: Path, names: dict[str, int]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``edges.csv`` -> ``(edge_index (2, E), weights (E,) or None)``; ``names`` (node -> index)
    gains the nodes not seen before, in order of first appearance."""
    header, rows = _rows(path, ("source", "target", "weight"), optional=1)
    src, dst, weights = [], [], []
    for line, cells in rows:
        for node in cells[:2]:
            if not node:
                raise UserInputError(f"{path} line {line} has an empty node name.")
            names.setdefault(node, len(names))
        src.append(names[cells[0]])
        dst.append(names[cells[1]])
        if len(header) == 3:
            w = _number(cells[2], path, line, "weight")
            if w < 0:
                raise UserInputError(
                    f"{path} line {line}: weight {cells[2]} is negative; edge weights must be >= 0."
                )
            weights.append(w)
    edge_index = torch.tensor([src, dst], dtype=torch.long).reshape(2, -1)
    return edge_index, torch.tensor(weights, dtype=torch.float32) if len(header) == 3 else None


def _read_adjacency(path: Path) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``adjacency.npz`` (scipy.sparse.save_npz) -> ``(edge_index, weights, N)``;
    ``A[i, j]`` is the edge ``i -> j``."""
    import scipy.sparse

    try:
        adj = scipy.sparse.load_npz(path).tocoo()
    except (OSError, ValueError, KeyError) as e:
        raise UserInputError(
            f"{path} is not a scipy.sparse.save_npz matrix ({str(e)[:100]})."
        ) from None
    if adj.ndim != 2 or adj.shape[0] != adj.shape[1]:
        raise UserInputError(f"{path} holds a {adj.shape} matrix; an adjacency must be square.")
    data = adj.data.astype(np.float64)
    bad = ~np.isfinite(data) | (data < 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise UserInputError(
            f"{path} holds {int(bad.sum())} negative or non-finite weights (the first: "
            f"{data[i]} at row {adj.row[i]}, column {adj.col[i]}); edge weights must be >= 0."
        )
    edge_index = torch.from_numpy(np.stack([adj.row, adj.col]).astype(np.int64))
    return edge_index, torch.from_numpy(data.astype(np.float32)), int(adj.shape[0])


def _read_features(folder: Path, nodes: list[str]) -> torch.Tensor | None:
    npy, table = folder / FEATURES_NPY, folder / FEATURES_CSV
    if npy.is_file() and table.is_file():
        raise UserInputError(f"{folder} holds both {FEATURES_NPY} and {FEATURES_CSV}; keep one.")
    if npy.is_file():
        try:
            x = np.load(npy, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise UserInputError(f"{npy} is not a readable .npy array ({str(e)[:100]}).") from None
        if x.ndim != 2 or x.shape[0] != len(nodes) or not np.issubdtype(x.dtype, np.number):
            raise UserInputError(
                f"{npy} holds a {x.dtype} array of shape {x.shape}; expected numbers of shape "
                f"({len(nodes)}, F), one row per node in the node order."
            )
        if not np.isfinite(x).all():
            raise UserInputError(f"{npy} holds {int((~np.isfinite(x)).sum())} NaN/inf values.")
        return torch.from_numpy(x.astype(np.float32))
    if not table.is_file():
        return None
    with table.open(newline="", encoding="utf-8-sig") as f:
        width = len(next(csv.reader(f), []))
    header, rows = _feature_rows(table, width)
    index = {n: i for i, n in enumerate(nodes)}
    x = np.zeros((len(nodes), len(header) - 1), dtype=np.float32)
    seen = set()
    for line, cells in rows:
        if cells[0] not in index:
            raise UserInputError(
                f"{table} line {line}: node {cells[0]!r} is in no edge and not in {LABELS}."
            )
        if cells[0] in seen:
            raise UserInputError(f"{table} line {line}: node {cells[0]!r} appears twice.")
        seen.add(cells[0])
        x[index[cells[0]]] = [_number(c, table, line, "feature") for c in cells[1:]]
    missing = [n for n in nodes if n not in seen]
    if missing:
        raise UserInputError(
            f"{table} has no row for {len(missing)} of the {len(nodes)} nodes "
            f"(e.g. {missing[0]!r})."
        )
    return torch.from_numpy(x)


def _feature_rows(path: Path, width: int) -> tuple[list[str], list]:
    """``features.csv``: header ``node,<names>`` (at least one feature column)."""
    if width < 2:
        raise UserInputError(f"{path} must start with a header node,<feature names...>.")
    with path.open(newline="", encoding="utf-8-sig") as f:
        first = [c.strip() for c in next(csv.reader(f))]
    return _rows(path, tuple(c.lower() for c in ["node", *first[1:]]))


def read_own_graph(path: Path, what: str = "--data") -> Data:
    """The graph in the layout of this module's docstring, as ``Data`` with ``x`` (or ``None``),
    ``edge_index`` (as given: direction and duplicates kept for :func:`graph_ext.data.
    prepare_graph`), ``edge_weight`` (when given), ``y`` (-1: unlabelled; ``None`` without
    ``labels.csv``), and the plain attributes ``node_names`` (node order) and ``class_names``."""
    folder = _folder(path)
    if path.is_dir():
        edges, adjacency = path / EDGES, path / ADJACENCY
        if edges.is_file() and adjacency.is_file():
            raise UserInputError(f"{what} {path} holds both {EDGES} and {ADJACENCY}; keep one.")
        path = edges if edges.is_file() else adjacency
    elif not path.is_file():
        raise UserInputError(f"{what} {path}: file does not exist.")
    labels = _read_labels(folder / LABELS) if (folder / LABELS).is_file() else None
    if path.suffix.lower() == ".npz":
        edge_index, weight, n = _read_adjacency(path)
        nodes = [str(i) for i in range(n)]
        if labels is not None:
            known = set(nodes)
            unknown = [k for k in labels if k not in known]
            if unknown:
                raise UserInputError(
                    f"{folder / LABELS} names node {unknown[0]!r}, but {path.name} numbers its "
                    f"nodes 0..{n - 1} (labels.csv must name them by row number)."
                )
    else:
        names = {k: i for i, k in enumerate(labels or {})}
        edge_index, weight = _read_edge_list(path, names)
        nodes = list(names)
    if not nodes:
        raise UserInputError(f"{what} {path}: the graph has no nodes.")
    data = Data(edge_index=edge_index, num_nodes=len(nodes), x=_read_features(folder, nodes))
    if weight is not None:
        data.edge_weight = weight
    classes: list[str] = []
    if labels is not None:
        classes = sorted({v for v in labels.values() if v})
        if not classes:
            raise UserInputError(f"{folder / LABELS} gives no node a label.")
        code = {c: k for k, c in enumerate(classes)}
        data.y = torch.tensor([code.get(labels.get(k, ""), -1) for k in nodes], dtype=torch.long)
    data.node_names = nodes
    data.class_names = classes
    return data


def structural_features(
    edge_index: torch.Tensor, num_nodes: int, kind: str, width: int | None = None
) -> torch.Tensor:
    """Node features made from the graph alone (for graphs without features).

    Args:
        edge_index: (2, E) edges (direction ignored, self-loops ignored).
        num_nodes: N.
        kind: ``"identity"``: the (N, N) identity (one column per node); ``"degree"``: one-hot of
            the number of distinct neighbours (in or out), degrees above :data:`DEGREE_CAP` (or
            ``width - 1``) sharing the last column.
        width: ``degree`` only: the number of columns (a checkpoint's); default
            ``min(max degree, DEGREE_CAP) + 1``.

    Returns:
        (N, width) float32.
    """
    if kind == "identity":
        return torch.eye(num_nodes)
    if kind != "degree":
        raise UserInputError(f"--set features must be identity or degree, got {kind!r}.")
    from torch_geometric.utils import remove_self_loops, to_undirected

    bad_shape = edge_index.ndim != 2 or edge_index.shape[0] != 2 or edge_index.is_floating_point()
    if bad_shape or (
        edge_index.numel() and not 0 <= int(edge_index.min()) <= int(edge_index.max()) < num_nodes
    ):
        raise UserInputError(
            f"--set features=degree needs edge_index of shape (2, E) with integer node ids in "
            f"[0, {num_nodes}), got shape {tuple(edge_index.shape)}."
        )

    simple = to_undirected(remove_self_loops(edge_index.long())[0], num_nodes=num_nodes)
    degree = torch.bincount(simple[0], minlength=num_nodes)
    if width is None:
        width = min(int(degree.max()) if num_nodes else 0, DEGREE_CAP) + 1
    return torch.nn.functional.one_hot(degree.clamp(max=width - 1), width).float()


def data_summary(
    prepared: Data,
    edges: dict[str, int],
    classes: list[str],
    split_ix: list[tuple[np.ndarray, np.ndarray]],
    features: str,
    directed: bool = False,
) -> dict[str, object]:
    """The realised data of a run: nodes, edges (input and trained), direction and weights, the
    source of the features, labelled / unlabelled nodes, class counts and, for every evaluation
    split, the class counts of its train and test nodes (``split_ix``: positions among the
    labelled nodes, :func:`graph_ext.evaluate.split_indices`). ``directed``: the run's choice
    (the trained ``edge_index`` is symmetric otherwise)."""
    n = int(prepared.num_nodes)
    out: dict[str, object] = {
        "nodes": n,
        "input_edges": edges["edges"],
        "input_directed_edges": edges["directed_edges"],
        "input_weighted_edges": edges["weighted_edges"],
        "self_loops_dropped": edges["self_loops"],
        "duplicate_edges_merged": edges["duplicates"],
        # trained edges: ordered pairs when directed, unordered pairs when undirected
        "edges": int(prepared.edge_index.shape[1]) // (1 if directed else 2),
        "directed": directed,
        "weighted": "edge_weight" in prepared,
        "features": int(prepared.x.shape[1]),
        "features_from": features,
    }
    y = prepared.y
    if y is None:
        return out
    known = (y >= 0).numpy()
    labels = y.numpy()[known]
    names = classes or [str(k) for k in range(int(labels.max()) + 1)]

    def counts(ix: np.ndarray) -> dict[str, int]:
        c = np.bincount(labels[ix], minlength=len(names))
        return {name: int(v) for name, v in zip(names, c, strict=True)}

    out["labelled"] = int(known.sum())
    out["unlabelled"] = int((~known).sum())
    out["class_counts"] = counts(np.arange(len(labels)))
    out["splits"] = [{"train": counts(tr), "test": counts(te)} for tr, te in split_ix]
    return out


def summary_lines(summary: dict[str, object]) -> list[str]:
    """:func:`data_summary` as printable lines (the first split only; all are in metrics.json)."""
    s = summary
    kind = ("directed" if s["directed"] else "undirected") + (", weighted" if s["weighted"] else "")
    lines = [
        f"data: {s['nodes']} nodes, {s['edges']} {kind} edges (input: {s['input_edges']} edges, "
        f"{s['input_directed_edges']} without a reverse edge, {s['input_weighted_edges']} "
        f"weighing other than 1, {s['self_loops_dropped']} self-loops dropped, "
        f"{s['duplicate_edges_merged']} duplicates merged); {s['features']} features "
        f"({s['features_from']})"
    ]
    if "class_counts" in s:
        fmt = lambda c: ", ".join(f"{k} {v}" for k, v in c.items())  # noqa: E731
        lines.append(
            f"labels: {s['labelled']} labelled, {s['unlabelled']} unlabelled (left out of the "
            f"evaluation); classes: {fmt(s['class_counts'])}"
        )
        if s["splits"]:
            first = s["splits"][0]
            lines.append(
                f"evaluation split 1 of {len(s['splits'])}: train {fmt(first['train'])}; "
                f"test {fmt(first['test'])}"
            )
    return lines
