"""Run directories: ``runs/<method>-<timestamp>/`` with ``config.yaml``, ``metrics.json``,
atomically written checkpoints and PNG plots (matplotlib, Agg backend)."""

from __future__ import annotations

import contextlib
import contextvars
import json
import math
import os
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

__all__ = [
    "RunDir",
    "RunContext",
    "default_device",
    "atomic_write_bytes",
    "active_run_dir",
    "class_map_figure",
    "embed_2d",
    "markdown_table",
    "pyplot",
]

_ACTIVE: contextvars.ContextVar[RunDir | None] = contextvars.ContextVar("active_run", default=None)


def active_run_dir() -> RunDir | None:
    """The run folder the command is working in (set by :meth:`RunDir.activate`), if any."""
    return _ACTIVE.get()


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


def atomic_write_bytes(path: Path, write: Any) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


_RESERVED: set[Path] = set()


class RunDir:
    """One run's output folder, created when the first file is written into it.

    A command that fails before any work leaves no folder; one that fails after work started keeps
    the folder with ``status`` in ``metrics.json`` saying how it ended (see :meth:`finish`).

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
            while path.exists() or path.resolve() in _RESERVED:
                path = Path(root) / f"{method}-{stamp}-{i}"
                i += 1
            _RESERVED.add(path.resolve())  # created lazily, so reserve the name in this process
        self.path = Path(path)
        self.started = False

    def ensure(self) -> Path:
        """Create the folder (for code that writes into it directly, e.g. Lightning) and return it."""
        self.path.mkdir(parents=True, exist_ok=True)
        return self.path

    def mark_started(self) -> None:
        """Training (or other real work) has begun: from now on a failure keeps the folder."""
        self.started = True

    @contextlib.contextmanager
    def activate(self) -> Iterator[RunDir]:
        """Make this the folder that progress bars mark as started (see :mod:`plugins.progress`)."""
        token = _ACTIVE.set(self)
        try:
            yield self
        finally:
            _ACTIVE.reset(token)

    def finish(self, status: str, error: str | None = None) -> None:
        """Record how the run ended; a run that never started is removed instead."""
        if not self.started and status != "completed":
            import shutil

            shutil.rmtree(self.path, ignore_errors=True)
            return
        self.save_metrics({"status": status, **({"error": error} if error else {})})

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def save_config(self, config: Mapping[str, Any], merge: bool = True) -> Path:
        """Write ``config.yaml``; by default merges into what is already there."""
        out = self.path / "config.yaml"
        data: dict[str, Any] = {}
        if merge and out.exists():
            data = yaml.safe_load(out.read_text()) or {}
        data.update(_plain(dict(config)))
        atomic_write_bytes(
            out, lambda tmp: Path(tmp).write_text(yaml.safe_dump(data, sort_keys=False))
        )
        return out

    def save_metrics(self, metrics: Mapping[str, Any], merge: bool = True) -> Path:
        """Write ``metrics.json``; by default merges into what is already there."""
        out = self.path / "metrics.json"
        data: dict[str, Any] = {}
        if merge and out.exists():
            data = json.loads(out.read_text())
        data.update(_plain(dict(metrics)))
        atomic_write_bytes(out, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2)))
        return out

    def save_json(self, data: Any, name: str) -> Path:
        """Write ``name`` (JSON) atomically, e.g. per-seed metrics beside ``metrics.json``."""
        out = self.path / name
        atomic_write_bytes(
            out, lambda tmp: Path(tmp).write_text(json.dumps(_plain(data), indent=2))
        )
        return out

    def load_metrics(self) -> dict[str, Any]:
        out = self.path / "metrics.json"
        return json.loads(out.read_text()) if out.exists() else {}

    def save_checkpoint(self, state: Mapping[str, Any], name: str = "checkpoint.pt") -> Path:
        """``torch.save`` to a temporary file in the run folder, then rename (never a half-written file)."""
        out = self.path / name
        atomic_write_bytes(out, lambda tmp: torch.save(dict(state), tmp))
        return out

    def save_figure(self, fig: Any, name: str) -> Path:
        import matplotlib.pyplot as plt

        out = self.path / name
        atomic_write_bytes(
            out, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        )
        plt.close(fig)
        return out

    def save_table(self, rows: Sequence[Mapping[str, Any]], name: str = "table.md") -> Path:
        """Write rows as a Markdown table (columns from the first row) and return the path."""
        text = markdown_table(rows)
        out = self.path / name
        atomic_write_bytes(out, lambda tmp: Path(tmp).write_text(text))
        return out

    # -- standard plots -------------------------------------------------------------------------
    def plot_loss(
        self,
        losses: Sequence[float] | Mapping[str, Sequence[float]],
        name: str = "loss.png",
        xlabel: str = "step",
    ) -> Path:
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(5, 3.2))
        series = losses if isinstance(losses, Mapping) else {"loss": losses}
        for label, values in series.items():
            ax.plot(np.arange(1, len(values) + 1), np.asarray(values, dtype=float), label=label)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("loss")
        ax.xaxis.set_major_locator(_integer_locator())  # steps and epochs are whole numbers
        if len(series) > 1:
            ax.legend()
        ax.grid(alpha=0.3)
        return self.save_figure(fig, name)

    def plot_spectrum(
        self, spectra: Mapping[str, torch.Tensor | np.ndarray], name: str = "spectrum.png"
    ) -> Path:
        """Log eigenvalue against rank, one line per entry (DirectCLR, Fig. 2)."""
        plt = pyplot()
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
        class_names: Sequence[str] | None = None,
    ) -> Path:
        """2-D map of embeddings (PCA then t-SNE when there are enough points) coloured by label.

        Up to 20 classes get a legend with one entry per class (named by ``class_names`` when
        given), never a continuous colour bar."""
        from plugins.progress import phase

        plt = pyplot()
        with phase(f"embedding map ({len(labels)} points)"):
            xy = embed_2d(z)
        labels = np.asarray(torch.as_tensor(labels).cpu())
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        classes = np.unique(labels)
        if len(classes) <= 20:
            cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
            for i, c in enumerate(classes):
                keep = labels == c
                name_c = class_names[int(c)] if class_names is not None else str(c)
                ax.scatter(xy[keep, 0], xy[keep, 1], color=cmap(i), s=6, label=name_c)
            ax.legend(fontsize=6, markerscale=2, loc="best", ncols=2 if len(classes) > 10 else 1)
        else:
            sc = ax.scatter(xy[:, 0], xy[:, 1], c=labels, cmap="viridis", s=6)
            fig.colorbar(sc, ax=ax, fraction=0.046)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title)
        return self.save_figure(fig, name)

    def plot_class_map(
        self,
        classes: np.ndarray,
        names: Sequence[str],
        name: str = "class_map.png",
        title: str = "",
        image: np.ndarray | None = None,
        nodata: int | None = None,
    ) -> Path:
        """A per-pixel class map with a legend naming each class (and the input image beside it)."""
        return self.save_figure(
            class_map_figure(classes, names, title=title, image=image, nodata=nodata), name
        )


def class_map_figure(
    classes: np.ndarray,
    names: Sequence[str],
    title: str = "",
    image: np.ndarray | None = None,
    nodata: int | None = None,
) -> Any:
    """Figure of an (H, W) class map in ``tab10``/``tab20`` colours with a legend, ``image``
    ((H, W, 3) in [0, 1]) on its left when given; pixels equal to ``nodata`` are left white."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    plt = pyplot()
    k = len(names)
    colours = plt.get_cmap("tab10" if k <= 10 else "tab20").colors[:k]
    panels = 2 if image is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels + 1.6, 4.2), squeeze=False)
    if image is not None:
        axes[0, 0].imshow(image)
        axes[0, 0].set_title("image")
    ax = axes[0, -1]
    shown = np.ma.masked_equal(classes, nodata) if nodata is not None else classes
    ax.imshow(shown, cmap=ListedColormap(colours), vmin=-0.5, vmax=k - 0.5, interpolation="nearest")
    ax.set_title(title)
    for a in axes.ravel():
        a.set_xticks([])
        a.set_yticks([])
    handles = [Patch(color=colours[i], label=str(n)) for i, n in enumerate(names)]
    if nodata is not None:
        handles.append(Patch(facecolor="white", edgecolor="grey", label="nodata"))
    ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=7)
    return fig


def _integer_locator() -> Any:
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


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


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
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
        options: ``--set key=value`` options; with ``option_set`` they are checked and converted to
            their declared types on construction.
        progress: show progress bars.
        threads: the command's ``--threads`` (``None``: each method's default policy, see
            :mod:`plugins.threads`).
        option_set: the options this command of this method declares
            (:class:`plugins.options.OptionSet`); ``None`` accepts any key (tests of internals).
        resume: a training-state checkpoint to continue from (``--resume``).
        checkpoint_every: ``(steps, seconds)`` between periodic checkpoints (``--checkpoint-every``).
        used: every option the method read and the value it used (recorded in ``config.yaml``).
        command: ``run`` or ``reproduce`` (named in option errors).
        engine: the engine flags (:class:`plugins.engine_settings.EngineSettings`; ``None``: the
            defaults), used by :func:`plugins.engine.fit`.
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
    option_set: Any = None
    resume: str | None = None
    checkpoint_every: tuple[int | None, float | None] = (None, 120.0)
    used: dict[str, Any] = field(default_factory=dict)
    command: str = "run"
    engine: Any = None

    def __post_init__(self) -> None:
        if self.engine is None:
            from plugins.engine_settings import EngineSettings

            self.engine = EngineSettings()
        if self.option_set is not None:
            self.options = self.option_set.parse(self.options, self.command, self.method)

    def thread_count(self, default: int | None = None) -> int | None:
        """``--threads`` if given, else the method's ``default`` (``None``: leave torch's)."""
        return self.threads if self.threads is not None else default

    def cpu_threads(self, default: int | None = None) -> Any:
        """Context pinning CPU threads to :meth:`thread_count` (see :mod:`plugins.threads`)."""
        from plugins.threads import cpu_threads

        return cpu_threads(self.thread_count(default))

    def option(self, key: str, default: Any = None) -> Any:
        """The value of ``--set key``: the user's, else the declared default (its ``--demo``
        default in a demo run), else ``default``. Reading an undeclared key is a ``KeyError``."""
        if self.option_set is not None:
            if key not in self.option_set:
                raise KeyError(
                    f"{self.method} reads option '{key}', which its OptionSet does not declare"
                )
            if key in self.options:
                value = self.options[key]
            else:
                declared = self.option_set[key].default_for(self.demo)
                value = declared if declared is not None else default
        else:
            value = self.options.get(key, default)
        self.used[key] = value
        return value

    def option_list(self, key: str, default: Any = ()) -> list:
        """An option as a list: ``--set key=a,b`` arrives as the string ``"a,b"`` (split on commas,
        blanks stripped), a YAML list stays a list, a single value becomes a one-item list and an
        empty ``--set key=`` (YAML null) the empty list."""
        value = self.option(key, default)
        if value is None:
            return []
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return list(value) if isinstance(value, list | tuple) else [value]

    def checkpointer(self, stages: tuple[str, ...] = ("train",)) -> Any:
        """A :class:`plugins.checkpoint.Checkpointer` writing ``<run>/last.ckpt`` periodically and
        resuming from ``--resume``."""
        from plugins.checkpoint import Checkpointer

        steps, seconds = self.checkpoint_every
        return Checkpointer(
            self.run_dir / "last.ckpt", self.method, steps, seconds, self.resume, stages
        )
