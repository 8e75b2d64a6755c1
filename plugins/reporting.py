"""Run directories: ``runs/<method>-<timestamp>/`` with ``config.yaml``, ``metrics.json``,
atomically written checkpoints and PNG plots (matplotlib, Agg backend)."""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

__all__ = ["RunDir", "RunContext", "default_device"]


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _plain(value: Any) -> Any:
    """Turn tensors, numpy scalars, paths and tuples into YAML/JSON-safe values."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path | torch.device):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _atomic_write_bytes(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class RunDir:
    """One run's output folder.

    Args:
        root: parent folder (``runs`` by default).
        method: method name; the folder is ``<root>/<method>-<YYYYmmdd-HHMMSS>`` (suffixed on clash).
        path: use exactly this folder instead.
    """

    def __init__(
        self, root: str | Path = "runs", method: str = "run", path: str | Path | None = None
    ):
        if path is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            path = Path(root) / f"{method}-{stamp}"
            i = 1
            while path.exists():
                path = Path(root) / f"{method}-{stamp}-{i}"
                i += 1
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def save_config(self, config: Mapping[str, Any]) -> Path:
        out = self.path / "config.yaml"
        _atomic_write_bytes(
            out,
            lambda tmp: Path(tmp).write_text(yaml.safe_dump(_plain(dict(config)), sort_keys=False)),
        )
        return out

    def save_metrics(self, metrics: Mapping[str, Any], merge: bool = True) -> Path:
        """Write ``metrics.json``; by default merges into what is already there."""
        out = self.path / "metrics.json"
        data: dict[str, Any] = {}
        if merge and out.exists():
            data = json.loads(out.read_text())
        data.update(_plain(dict(metrics)))
        _atomic_write_bytes(out, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2)))
        return out

    def save_json(self, data: Any, name: str) -> Path:
        """Write ``name`` (JSON) atomically, e.g. per-seed metrics beside ``metrics.json``."""
        out = self.path / name
        _atomic_write_bytes(
            out, lambda tmp: Path(tmp).write_text(json.dumps(_plain(data), indent=2))
        )
        return out

    def load_metrics(self) -> dict[str, Any]:
        out = self.path / "metrics.json"
        return json.loads(out.read_text()) if out.exists() else {}

    def save_checkpoint(self, state: Mapping[str, Any], name: str = "checkpoint.pt") -> Path:
        """``torch.save`` to a temporary file in the run folder, then rename (never a half-written file)."""
        out = self.path / name
        _atomic_write_bytes(out, lambda tmp: torch.save(dict(state), tmp))
        return out

    def save_figure(self, fig: Any, name: str) -> Path:
        import matplotlib.pyplot as plt

        out = self.path / name
        _atomic_write_bytes(
            out, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        )
        plt.close(fig)
        return out

    def save_table(self, rows: Sequence[Mapping[str, Any]], name: str = "table.md") -> Path:
        """Write rows as a Markdown table (columns from the first row) and return the path."""
        text = markdown_table(rows)
        out = self.path / name
        _atomic_write_bytes(out, lambda tmp: Path(tmp).write_text(text))
        return out

    # -- standard plots -------------------------------------------------------------------------
    def plot_loss(
        self,
        losses: Sequence[float] | Mapping[str, Sequence[float]],
        name: str = "loss.png",
        xlabel: str = "step",
    ) -> Path:
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(5, 3.2))
        series = losses if isinstance(losses, Mapping) else {"loss": losses}
        for label, values in series.items():
            ax.plot(np.arange(1, len(values) + 1), np.asarray(values, dtype=float), label=label)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("loss")
        if len(series) > 1:
            ax.legend()
        ax.grid(alpha=0.3)
        return self.save_figure(fig, name)

    def plot_spectrum(
        self, spectra: Mapping[str, torch.Tensor | np.ndarray], name: str = "spectrum.png"
    ) -> Path:
        """Log eigenvalue against rank, one line per entry (DirectCLR, Fig. 2)."""
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for label, ev in spectra.items():
            ev = np.asarray(torch.as_tensor(ev).detach().cpu(), dtype=float)
            ax.plot(np.arange(1, len(ev) + 1), np.log10(np.clip(ev, 1e-20, None)), label=label)
        ax.set_xlabel("singular value rank")
        ax.set_ylabel("log10 eigenvalue")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        return self.save_figure(fig, name)

    def plot_embedding(
        self,
        z: torch.Tensor | np.ndarray,
        labels: torch.Tensor | np.ndarray,
        name: str = "embedding.png",
        title: str = "",
    ) -> Path:
        """2-D map of embeddings (PCA then t-SNE when there are enough points) coloured by label."""
        plt = _pyplot()
        xy = embed_2d(z)
        labels = np.asarray(torch.as_tensor(labels).cpu())
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        sc = ax.scatter(
            xy[:, 0], xy[:, 1], c=labels, cmap="tab10" if labels.max() < 10 else "tab20", s=6
        )
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title)
        fig.colorbar(sc, ax=ax, fraction=0.046)
        return self.save_figure(fig, name)


def embed_2d(z: torch.Tensor | np.ndarray, seed: int = 0) -> np.ndarray:
    """(N, D) -> (N, 2) with PCA to 50 dims then t-SNE (PCA alone below 50 points)."""
    from sklearn.decomposition import PCA

    x = np.asarray(torch.as_tensor(z).detach().float().cpu())
    x = x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)
    x = PCA(n_components=min(50, *x.shape), random_state=seed).fit_transform(x)
    if x.shape[0] < 50:
        return x[:, :2] if x.shape[1] >= 2 else np.pad(x, ((0, 0), (0, 2 - x.shape[1])))
    from sklearn.manifold import TSNE

    return TSNE(
        n_components=2, init="pca", random_state=seed, perplexity=min(30, x.shape[0] // 4)
    ).fit_transform(x)


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return ""
    cols = list(rows[0].keys())
    for r in rows[1:]:
        cols += [c for c in r if c not in cols]

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4f}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@dataclass
class RunContext:
    """Everything a method's ``run``/``reproduce`` function receives from the command.

    Attributes:
        method: registry name.
        run_dir: where outputs go.
        data: user's data path (``None``: the embedded default).
        epochs: user's epoch budget (``None``: the method's default, shortened when ``demo``).
        device: torch device.
        seed: random seed.
        demo: a short run for ``contrastive-plugins demo`` / smoke tests.
        options: extra ``--set key=value`` options, as strings parsed by YAML.
        progress: show progress bars.
        threads: the command's ``--threads`` (``None``: each method's default policy, see
            :mod:`plugins.threads`).
    """

    method: str
    run_dir: RunDir
    data: str | None = None
    epochs: int | None = None
    device: torch.device = field(default_factory=default_device)
    seed: int = 0
    demo: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    progress: bool = True
    threads: int | None = None

    def thread_count(self, default: int | None = None) -> int | None:
        """``--threads`` if given, else the method's ``default`` (``None``: leave torch's)."""
        return self.threads if self.threads is not None else default

    def cpu_threads(self, default: int | None = None) -> Any:
        """Context pinning CPU threads to :meth:`thread_count` (see :mod:`plugins.threads`)."""
        from plugins.threads import cpu_threads

        return cpu_threads(self.thread_count(default))

    def option(self, key: str, default: Any = None) -> Any:
        return self.options.get(key, default)

    def option_list(self, key: str, default: Any = ()) -> list:
        """An option as a list: ``--set key=a,b`` arrives as the string ``"a,b"`` (split on commas,
        blanks stripped), a YAML list stays a list, a single value becomes a one-item list and an
        empty ``--set key=`` (YAML null) the empty list."""
        value = self.options.get(key, default)
        if value is None:
            return []
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return list(value) if isinstance(value, list | tuple) else [value]
