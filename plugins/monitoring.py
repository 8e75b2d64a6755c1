"""Dimensional-collapse monitoring while a model trains (Jing et al., ICLR 2022, Sec. 3 and Fig. 2).

Two front ends share one piece of logic (:func:`collapse_stats`):

* :class:`CollapseTracker` - plain torch, no Trainer needed. Use it in any loop (MONAI / ignite,
  PyG, hand-written)::

      tracker = CollapseTracker(every_n_steps=100, on="representation")
      for step, batch in enumerate(loader, start=1):
          ...  # optimiser step
          if tracker.due(step):
              with torch.no_grad():
                  tracker.update(step, encoder(probe_images))   # -> dict of floats
      tracker.plot(run_dir)       # spectrum (one line per check) + curves, PNG
      tracker.save(run_dir)       # collapse_<on>.json

  For an ignite ``Engine`` (MONAI's ``SupervisedTrainer``): ``tracker.attach(engine, features_fn)``
  where ``features_fn(engine) -> (N, D)`` is called every ``every_n_steps`` iterations.

* :class:`CollapseMonitor` - a ``lightning.pytorch.callbacks.Callback`` (works in any
  LightningModule, torchgeo ``BaseTask``s included). It finds the features to analyse with this
  **hook contract**, first match wins:

  1. ``probe_batch`` was given and the module defines
     ``collapse_features(self, batch, on: str = "representation") -> Tensor (N, D)``: the held-out
     probe batch is moved to the module's device and passed through the hook in ``eval()`` mode
     under ``torch.no_grad()`` (training mode is restored afterwards). This is the recommended set-up:
     the spectrum is then always measured on the same images.
  2. ``training_step`` returned a mapping holding the key ``output_key`` (default: the value of
     ``on``, i.e. ``"representation"`` or ``"embedding"``): that tensor (detached) is used, at no
     extra forward cost. Return ``{"loss": loss, "representation": r, "embedding": z}``.
  3. The module defines ``collapse_features``: it is called on the current training batch.

  The hook may omit the ``on`` argument (``collapse_features(self, batch)``); it is then called
  with the batch only. Features with more than two dimensions (e.g. dense ``(N, C, H, W)`` maps)
  are averaged over the trailing dimensions, i.e. globally pooled to ``(N, C)``.

What is measured on the features ``z`` (N, D), see :func:`collapse_stats`:

* ``effective_rank`` - RankMe (:func:`plugins.metrics.effective_rank`),
* ``nonzero_eigenvalues`` - the number of eigenvalues of the covariance of L2-normalised ``z``
  (:func:`plugins.metrics.spectrum`) above ``threshold`` (1e-7) times the largest; the centred
  covariance of N samples has rank at most N - 1, so use a probe of more than D samples,
* ``normalized_std`` - mean over dimensions of the standard deviation of ``z / ||z||`` over the batch
  (Chen & He, SimSiam, CVPR 2021, Sec. 4.1): about ``1/sqrt(D)`` when healthy, 0 at full collapse,
* ``dim`` - D.

Lightning logs them as ``collapse/<on>/<name>``; the spectra are kept and plotted as log eigenvalue
against rank, one line per check (the paper's Fig. 2), into ``run_dir`` (default: the trainer's
log dir) at the end of ``fit``.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from plugins.metrics import effective_rank, spectrum

try:  # lightning is a dependency, but the torch tracker must keep working without it
    from lightning.pytorch.callbacks import Callback as _Callback

    _HAS_LIGHTNING = True
except ImportError:  # pragma: no cover - exercised only where lightning is absent
    _Callback = object  # type: ignore[assignment,misc]
    _HAS_LIGHTNING = False

__all__ = ["collapse_stats", "CollapseTracker", "CollapseMonitor", "DEFAULT_EVERY_N_STEPS"]

#: Default check frequency; ``benchmarks/monitoring.py`` measures its cost (target < 2 %).
DEFAULT_EVERY_N_STEPS = 100
_ON = ("representation", "embedding")
_ABS_FLOOR = 1e-12


def _as_2d(features: torch.Tensor) -> torch.Tensor:
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"collapse features must be a torch.Tensor, got {type(features).__name__}")
    if features.ndim == 1 or features.shape[0] < 2:
        raise ValueError(
            f"collapse features must be (N, D) with N >= 2, got shape {tuple(features.shape)}"
        )
    if features.ndim > 2:
        # dense maps (N, C, H, W): global average pooling gives the representation vector
        features = features.flatten(2).mean(-1)
    return features.detach()


def collapse_stats(
    features: torch.Tensor, threshold: float = 1e-7
) -> tuple[dict[str, float], np.ndarray]:
    """Collapse statistics of one batch of features.

    Args:
        features: (N, D) (or (N, C, ...) pooled to (N, C)).
        threshold: an eigenvalue counts as non-zero above ``threshold`` times the largest (and above
            1e-12, since L2-normalised features have total variance at most 1).

    Returns:
        ``({"effective_rank", "nonzero_eigenvalues", "normalized_std", "dim"}, eigenvalues (D,))``
        with the eigenvalues descending (float64 numpy), as in :func:`plugins.metrics.spectrum`.
    """
    z = _as_2d(features)
    ev = spectrum(z)
    top = float(ev[0]) if ev.numel() else 0.0
    # the absolute floor keeps float32 round-off of a fully collapsed batch (all eigenvalues ~1e-16)
    # from counting as rank: normalised features have total variance <= 1
    nonzero = int((ev > max(threshold * top, _ABS_FLOOR)).sum())
    zn = torch.nn.functional.normalize(z.double(), dim=1)
    stats = {
        "effective_rank": effective_rank(z),
        "nonzero_eigenvalues": float(nonzero),
        "normalized_std": float(zn.std(dim=0).mean()),
        "dim": float(z.shape[1]),
    }
    return stats, ev.cpu().numpy()


class CollapseTracker:
    """Plain-torch collapse monitor: records :func:`collapse_stats` and spectra per step.

    Args:
        every_n_steps: :meth:`due` is true every this many steps (and :meth:`attach` fires then).
        on: label of the features, ``"representation"`` (encoder output r) or ``"embedding"``
            (projector output z); used in metric names and file names.
        threshold: relative eigenvalue threshold for ``nonzero_eigenvalues``.

    Attributes:
        history: one dict per check, ``{"step": s, **stats}``.
        spectra: step -> eigenvalues (D,) descending.
    """

    def __init__(
        self,
        every_n_steps: int = DEFAULT_EVERY_N_STEPS,
        on: str = "representation",
        threshold: float = 1e-7,
    ):
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        if on not in _ON:
            raise ValueError(f"on must be one of {_ON}, got {on!r}")
        self.every_n_steps = int(every_n_steps)
        self.on = on
        self.threshold = threshold
        self.history: list[dict[str, float]] = []
        self.spectra: dict[int, np.ndarray] = {}

    @property
    def last_step(self) -> int | None:
        return int(self.history[-1]["step"]) if self.history else None

    def due(self, step: int) -> bool:
        """True when ``step`` is a multiple of ``every_n_steps`` and not yet recorded."""
        return step % self.every_n_steps == 0 and step != self.last_step

    def update(self, step: int, features: torch.Tensor) -> dict[str, float]:
        """Measure ``features`` (N, D) now and record them under ``step``; returns the stats."""
        stats, ev = collapse_stats(features, self.threshold)
        if step == self.last_step:  # re-measuring a step replaces it
            self.history.pop()
        self.history.append({"step": float(step), **stats})
        self.spectra[int(step)] = ev
        return stats

    def attach(self, engine: Any, features_fn: Callable[[Any], torch.Tensor]) -> None:
        """Register on an ignite ``Engine`` (e.g. MONAI's ``SupervisedTrainer``) every ``every_n_steps``
        iterations; ``features_fn(engine)`` returns the (N, D) features, called under ``no_grad``."""
        from ignite.engine import Events

        def _check(engine: Any) -> None:
            with torch.no_grad():
                self.update(int(engine.state.iteration), features_fn(engine))

        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.every_n_steps), _check)

    # -- outputs ----------------------------------------------------------------------------------
    def save(self, run_dir: Any) -> Path:
        """Write ``collapse_<on>.json`` (history and spectra) into ``run_dir`` (path or RunDir)."""
        out = _dir(run_dir) / f"collapse_{self.on}.json"
        data = {
            "on": self.on,
            "history": self.history,
            "spectra": {str(k): v.tolist() for k, v in self.spectra.items()},
        }
        out.write_text(json.dumps(data))
        return out

    def plot(self, run_dir: Any, max_lines: int = 10) -> list[Path]:
        """Save ``collapse_spectrum_<on>.png`` (log10 eigenvalue vs rank, one line per check, at most
        ``max_lines`` evenly spaced checks plus the last) and ``collapse_curves_<on>.png``."""
        if not self.spectra:
            return []
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        folder = _dir(run_dir)
        steps = sorted(self.spectra)
        keep = sorted(
            {
                steps[int(round(i))]
                for i in np.linspace(0, len(steps) - 1, min(max_lines, len(steps)))
            }
        )
        fig, ax = plt.subplots(figsize=(5, 3.4))
        cmap = plt.get_cmap("viridis")
        for i, s in enumerate(keep):
            ev = np.clip(self.spectra[s], 1e-20, None)
            ax.plot(
                np.arange(1, len(ev) + 1),
                np.log10(ev),
                color=cmap(i / max(1, len(keep) - 1)),
                label=f"step {s}",
            )
        ax.set_xlabel("singular value rank")
        ax.set_ylabel("log10 eigenvalue")
        ax.set_title(f"spectrum of the {self.on}")
        ax.legend(fontsize=6)
        ax.grid(alpha=0.3)
        paths = [_save(fig, folder / f"collapse_spectrum_{self.on}.png")]

        fig, axes = plt.subplots(1, 3, figsize=(10, 2.8))
        x = [h["step"] for h in self.history]
        for ax, key in zip(axes, ("effective_rank", "nonzero_eigenvalues", "normalized_std")):
            ax.plot(x, [h[key] for h in self.history], marker=".")
            ax.set_xlabel("step")
            ax.set_title(key, fontsize=9)
            ax.grid(alpha=0.3)
        if self.history:  # healthy level of the normalised std
            axes[2].axhline(1 / math.sqrt(self.history[-1]["dim"]), ls="--", color="grey", lw=0.8)
        fig.tight_layout()
        paths.append(_save(fig, folder / f"collapse_curves_{self.on}.png"))
        return paths


def _dir(run_dir: Any) -> Path:
    path = Path(getattr(run_dir, "path", run_dir))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _call_hook(hook: Callable[..., torch.Tensor], batch: Any, on: str) -> torch.Tensor:
    try:
        params = inspect.signature(hook).parameters
    except (TypeError, ValueError):  # builtins / C callables
        params = {}
    takes_on = "on" in params or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()
    )
    return hook(batch, on=on) if takes_on else hook(batch)


class CollapseMonitor(_Callback):
    """Lightning callback measuring dimensional collapse every ``every_n_steps`` optimiser steps.

    See the module docstring for how it finds features (the ``collapse_features`` hook, a probe
    batch, or ``training_step`` outputs).

    Args:
        every_n_steps: optimiser steps between checks (``trainer.global_step``); one more check runs
            at the end of ``fit`` when a probe batch or the hook is available.
        on: ``"representation"`` or ``"embedding"``; passed to the hook and used as output key.
        probe_batch: a fixed held-out batch (anything the hook accepts); recommended.
        output_key: key of ``training_step``'s output mapping to read (default: ``on``).
        run_dir: folder for the plots and JSON (path or RunDir); default ``trainer.log_dir`` or
            ``trainer.default_root_dir``.
        threshold: relative eigenvalue threshold.
        log: log the stats with ``pl_module.log_dict`` (keys ``collapse/<on>/<name>``).
        plot: save the plots and JSON at the end of ``fit`` (global rank 0 only).
    """

    def __init__(
        self,
        every_n_steps: int = DEFAULT_EVERY_N_STEPS,
        on: str = "representation",
        probe_batch: Any = None,
        output_key: str | None = None,
        run_dir: Any = None,
        threshold: float = 1e-7,
        log: bool = True,
        plot: bool = True,
    ):
        if not _HAS_LIGHTNING:  # pragma: no cover
            raise ImportError(
                "CollapseMonitor needs lightning; use CollapseTracker in plain torch loops"
            )
        super().__init__()
        self.tracker = CollapseTracker(every_n_steps, on, threshold)
        self.on = on
        self.probe_batch = probe_batch
        self.output_key = output_key or on
        self.run_dir = run_dir
        self.log_stats = log
        self.plot = plot

    @property
    def state_key(self) -> str:
        return f"CollapseMonitor[{self.on}]"

    def _features(self, pl_module: Any, outputs: Any, batch: Any) -> torch.Tensor | None:
        hook = getattr(pl_module, "collapse_features", None)
        if self.probe_batch is not None and hook is not None:
            return self._run_hook(pl_module, hook, self.probe_batch, move=True)
        if isinstance(outputs, Mapping) and self.output_key in outputs:
            return outputs[self.output_key]
        if hook is not None and batch is not None:
            return self._run_hook(pl_module, hook, batch, move=False)
        return None

    def _run_hook(
        self, pl_module: Any, hook: Callable[..., torch.Tensor], batch: Any, move: bool
    ) -> torch.Tensor:
        if move:
            from lightning.fabric.utilities.apply_func import move_data_to_device

            batch = move_data_to_device(batch, pl_module.device)
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.no_grad():
                return _call_hook(hook, batch, self.on)
        finally:
            pl_module.train(was_training)

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = int(trainer.global_step)
        if not self.tracker.due(step):
            return
        features = self._features(pl_module, outputs, batch)
        if features is None:
            raise RuntimeError(
                f"CollapseMonitor(on={self.on!r}) found no features: define "
                f"`collapse_features(batch, on)` on {type(pl_module).__name__} or return a dict with key "
                f"{self.output_key!r} from training_step"
            )
        stats = self.tracker.update(step, features)
        if self.log_stats:
            pl_module.log_dict(
                {f"collapse/{self.on}/{k}": v for k, v in stats.items() if k != "dim"},
                on_step=True,
                on_epoch=False,
                batch_size=1,
            )

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        step = int(trainer.global_step)
        hook = getattr(pl_module, "collapse_features", None)
        if step != self.tracker.last_step and self.probe_batch is not None and hook is not None:
            self.tracker.update(step, self._run_hook(pl_module, hook, self.probe_batch, move=True))
        if self.plot and trainer.is_global_zero and self.tracker.history:
            folder = self.run_dir or getattr(trainer, "log_dir", None) or trainer.default_root_dir
            self.tracker.plot(folder)
            self.tracker.save(folder)

    def state_dict(self) -> dict[str, Any]:
        return {
            "history": self.tracker.history,
            "spectra": {k: v.tolist() for k, v in self.tracker.spectra.items()},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.tracker.history = list(state_dict.get("history", []))
        self.tracker.spectra = {
            int(k): np.asarray(v) for k, v in state_dict.get("spectra", {}).items()
        }
