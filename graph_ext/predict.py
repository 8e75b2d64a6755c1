"""``contrastive-plugins predict ariel --checkpoint C --data D --out DIR``: node embeddings.

Rebuilds the encoder from a run's ``checkpoint.pt`` (its ``config``, ``in_dim`` and the way its
features were made), prepares the graph ``D`` as that run did (same ``directed`` / ``weighted``,
same feature construction) and writes, into ``DIR``:

* ``embeddings.npy``: (N, h) float32, the encoder's output on the full clean graph, row ``i`` for
  the ``i``-th node in the node order (:mod:`graph_ext.own_data`; for named graphs, PyG's);
* ``nodes.csv``: ``index,node,label`` naming each row (label empty for unlabelled nodes).

``D`` is anything ``run ariel --data`` takes. A checkpoint trained on another feature count than
``D`` gives one sentence.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from graph_ext.config import ARIELConfig
from graph_ext.data import load_graph, prepare_graph
from graph_ext.model import ARIEL
from graph_ext.own_data import structural_features
from graph_ext.train import embed_graph
from plugins.checkpoint import load_checkpoint
from plugins.errors import UserInputError
from plugins.reporting import atomic_write_bytes

__all__ = ["predict_embeddings", "main", "build_parser"]


def _rebuild(path: Path) -> tuple[ARIEL, dict[str, Any]]:
    ckpt = load_checkpoint(path, what="--checkpoint")
    if not {"model", "config", "in_dim"} <= set(ckpt):
        raise UserInputError(
            f"--checkpoint {path} is not an ARIEL/GRACE run checkpoint (needs model, config and "
            "in_dim, as the checkpoint.pt of 'run ariel' holds)."
        )
    known = {f.name for f in fields(ARIELConfig)}
    config = {k: v for k, v in dict(ckpt["config"]).items() if k in known}
    for key in ("drop_edge", "drop_feature"):
        if key in config:
            config[key] = tuple(config[key])
    model = ARIEL(int(ckpt["in_dim"]), ARIELConfig(**config))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise UserInputError(
            f"--checkpoint {path}: its weights do not fit its own config "
            f"({str(e).splitlines()[0]})."
        ) from None
    return model, ckpt


def predict_embeddings(
    checkpoint: str | Path,
    data: str | Path,
    out: str | Path,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Write ``embeddings.npy`` and ``nodes.csv`` (module docstring) and return
    ``{"embeddings", "nodes", "shape"}`` (paths and the array's shape)."""
    model, ckpt = _rebuild(Path(checkpoint))
    cfg, in_dim = model.config, int(ckpt["in_dim"])
    raw, name = load_graph(data, what="--data")
    features = ckpt.get("features") or ("data" if raw.x is not None else "identity")
    if features in ("identity", "degree"):
        raw = raw.clone()
        width = in_dim if features == "degree" else None
        raw.x = structural_features(raw.edge_index, raw.num_nodes, features, width)
    elif raw.x is None:
        raise UserInputError(
            f"--checkpoint {checkpoint} was trained on the data's own features, but --data {data} "
            "has none."
        )
    if cfg.weighted and "edge_weight" not in raw:
        raise UserInputError(
            f"--checkpoint {checkpoint} was trained with weighted=true, but --data {data} has no "
            "edge weights."
        )
    prepared = prepare_graph(raw, cfg.normalize_features, cfg.directed, cfg.weighted)
    if prepared.x.shape[1] != in_dim:
        raise UserInputError(
            f"--checkpoint {checkpoint} was trained on {in_dim} node features ({features}), but "
            f"--data {data} gives {prepared.x.shape[1]}; predict with the graph (or the feature "
            "layout) it was trained on."
        )
    z = embed_graph(model.to(device), prepared.to(device)).cpu().numpy().astype(np.float32)
    n = z.shape[0]
    nodes = list(getattr(raw, "node_names", None) or [str(i) for i in range(n)])
    classes = list(getattr(raw, "class_names", None) or [])
    y = raw.y.tolist() if raw.y is not None else [-1] * n
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["index", "node", "label"])
    for i, (node, label) in enumerate(zip(nodes, y, strict=True)):
        shown = "" if label < 0 else (classes[label] if classes else str(label))
        writer.writerow([i, node, shown])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    emb, table = out / "embeddings.npy", out / "nodes.csv"
    atomic_write_bytes(emb, lambda tmp: _save_npy(tmp, z))
    atomic_write_bytes(table, lambda tmp: Path(tmp).write_text(text.getvalue()))
    return {"embeddings": emb, "nodes": table, "shape": z.shape, "data": name}


def _save_npy(path: str | Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would append .npy to a bare name
        np.save(f, array)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit status 2), like the ``contrastive-plugins`` command."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        print(f"{self.prog}: error: {message} (see {self.prog} --help).", file=sys.stderr)
        raise SystemExit(2)


def build_parser(prog: str = "contrastive-plugins predict ariel|grace") -> argparse.ArgumentParser:
    p = _Parser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a run's checkpoint.pt (run ariel|grace)")
    p.add_argument(
        "--data",
        required=True,
        help="the graph: a folder with edges.csv or adjacency.npz (+ labels.csv, features.npy), "
        "or anything run ariel --data takes",
    )
    p.add_argument("--out", required=True, help="folder for embeddings.npy and nodes.csv (created)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise UserInputError(f"--device {args.device}: expected cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserInputError(f"--device {args.device}: CUDA is not available on this machine.")
    res = predict_embeddings(args.checkpoint, args.data, args.out, device)
    n, h = res["shape"]
    print(f"wrote {res['embeddings']} ({n} nodes x {h}) and {res['nodes']} (the node order)")
    return 0
