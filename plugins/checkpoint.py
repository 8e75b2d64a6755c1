"""Safe checkpoint loading, and periodic resumable checkpoints for plain-torch training loops.

* :func:`load_checkpoint` is the one ``torch.load`` of the project: ``weights_only=True`` always, so a
  file that holds arbitrary Python objects is refused with one sentence instead of being unpickled;
  a missing, truncated or corrupt file, or one written by another method, is one sentence too.
* :class:`Checkpointer` writes ``last.ckpt`` atomically every N steps or every T seconds, with the
  model, optimiser, scheduler, generator and global RNG states, so that an interrupted run keeps its
  last complete step and ``--resume`` continues it to the same final parameters as an uninterrupted
  run (tested by a SIGINT kill test).
"""

from __future__ import annotations

import pickle
import random
import re
import time
from collections.abc import Mapping, MutableMapping, MutableSequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from plugins.errors import UserInputError

__all__ = [
    "load_checkpoint",
    "Checkpointer",
    "check_resumed_permutation",
    "parse_every",
    "rng_state",
    "set_rng_state",
]

FORMAT = "contrastive-plugins/training-state/1"


def load_checkpoint(
    path: str | Path,
    method: str | None = None,
    map_location: str | torch.device = "cpu",
    what: str = "checkpoint",
) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with one-sentence errors.

    Args:
        path: the file.
        method: when given, a file whose ``method`` entry names another method is refused.
        map_location: where tensors go.
        what: how the message names the file ("checkpoint", "--resume file", ...).
    """
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{what} {path} does not exist.")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"(?:Unsupported global|GLOBAL) ([\w.]+)", str(e))
        if found:
            raise UserInputError(
                f"{what} {path} holds arbitrary Python objects ({found.group(1)}); refusing to "
                "unpickle it (only tensors and plain containers are loaded)."
            ) from None
        raise UserInputError(
            f"{what} {path} is truncated or corrupt and cannot be loaded (not a torch checkpoint)."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserInputError(
            f"{what} {path} is truncated or corrupt and cannot be loaded ({first[:120]})."
        ) from None
    if not isinstance(obj, dict):
        raise UserInputError(f"{what} {path} holds a {type(obj).__name__}, not a checkpoint dict.")
    if method is not None and obj.get("method") not in (None, method):
        raise UserInputError(
            f"{what} {path} was written by method '{obj['method']}', not '{method}'."
        )
    return obj


def parse_every(text: str | int | None) -> tuple[int | None, float | None]:
    """``"50"`` -> every 50 steps; ``"90s"``, ``"5m"`` -> every 90 / 300 seconds; ``"0"``/none -> off."""
    if text is None:
        return None, None
    s = str(text).strip().lower()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|m|min|h)?", s)
    if not m:
        raise UserInputError(
            f"--checkpoint-every expects a step count (50) or a time (90s, 5m), got '{text}'."
        )
    value, unit = float(m.group(1)), m.group(2)
    if value <= 0:
        return None, None
    if unit is None:
        if not value.is_integer():
            raise UserInputError(f"--checkpoint-every step count must be whole, got '{text}'.")
        return int(value), None
    return None, value * {"s": 1, "m": 60, "min": 60, "h": 3600}[unit]


def rng_state() -> dict[str, Any]:
    """Global RNG states (python, numpy, torch CPU and CUDA) as tensors and plain containers."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(np.asarray(keys).copy()), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(
        (kind, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached))
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _state_of(obj: Any) -> Any:
    if isinstance(obj, torch.Generator):
        return obj.get_state()
    if hasattr(obj, "state_dict"):
        return obj.state_dict()
    return obj


def _restore(obj: Any, saved: Any, name: str) -> None:
    if isinstance(obj, torch.Generator):
        obj.set_state(saved)
    elif hasattr(obj, "load_state_dict"):
        obj.load_state_dict(saved)
    elif isinstance(obj, MutableSequence):
        obj[:] = saved
    elif isinstance(obj, MutableMapping):
        obj.clear()
        obj.update(saved)
    else:
        raise TypeError(f"cannot restore '{name}' of type {type(obj).__name__} in place")


class Checkpointer:
    """Periodic atomic checkpoints of a training loop, and resume from one.

    A loop that supports it takes ``checkpointer: Checkpointer | None`` and does::

        start = checkpointer.restore(total, model=model, opt=opt, gen=g, losses=losses) if checkpointer else 0
        for step in range(start, total):
            ...                                  # one complete step
            if checkpointer:
                checkpointer.step(step + 1, model=model, opt=opt, gen=g, losses=losses)

    Every named object is saved and restored in place: modules, optimisers and schedulers through
    their state dicts, generators through their states, lists and dicts by content. The global RNG
    states are saved too, so the resumed steps draw the same augmentations and batches.

    A run with several loops in sequence (SuperCon's two stages) names them in ``stages`` and uses
    :meth:`for_stage`; the one file holds the latest stage, and resuming skips the stages before it.

    Args:
        path: the checkpoint file (``<run>/last.ckpt``); ``None`` disables saving.
        method: written into the file; resuming from another method's file is refused.
        every_steps, every_seconds: save when either is due (both ``None``: only :meth:`save`).
        resume: a checkpoint to continue from (``--resume``).
        stages: the loops of the run, in order.
    """

    def __init__(
        self,
        path: str | Path | None,
        method: str,
        every_steps: int | None = None,
        every_seconds: float | None = 120.0,
        resume: str | Path | None = None,
        stages: tuple[str, ...] = ("train",),
        stage: str | None = None,
    ):
        self.path = Path(path) if path is not None else None
        self.method = method
        self.every_steps = every_steps
        self.every_seconds = every_seconds
        self.resume_path = Path(resume) if resume is not None else None
        self.stages = tuple(stages)
        self.stage = stage or self.stages[0]
        self._last_save = time.monotonic()
        self._resumed: dict[str, Any] | None = None
        self.saved_steps: list[int] = []

    def for_stage(self, stage: str) -> Checkpointer:
        """This checkpointer for another loop of the run (one of ``stages``)."""
        if stage not in self.stages:
            raise ValueError(f"stage {stage!r} is not one of {self.stages}")
        other = Checkpointer(
            self.path, self.method, self.every_steps, self.every_seconds, self.resume_path,
            self.stages, stage,
        )  # fmt: skip
        other._resumed = self._resumed
        return other

    def independent_stage(self, stage: str) -> Checkpointer:
        """This checkpointer for ``stage`` of a run whose stages train separate models.

        The file holds only the latest stage, so a stage before the ``--resume`` file's is trained
        again from the start (same seed, same result) instead of being skipped; the file's own stage
        resumes and later stages start fresh."""
        resumed = self.load_resume()
        if resumed is not None and self.stages.index(stage) < self.stages.index(resumed["stage"]):
            return Checkpointer(
                self.path,
                self.method,
                self.every_steps,
                self.every_seconds,
                None,
                self.stages,
                stage,
            )
        return self.for_stage(stage)

    def load_resume(self) -> dict[str, Any] | None:
        if self.resume_path is None:
            return None
        if self._resumed is None:
            obj = load_checkpoint(self.resume_path, self.method, what="--resume file")
            if obj.get("format") != FORMAT:
                raise UserInputError(
                    f"--resume file {self.resume_path} is not a training-state checkpoint "
                    "(use the run's last.ckpt, not its final checkpoint.pt)."
                )
            if obj.get("stage") not in self.stages:
                raise UserInputError(
                    f"--resume file {self.resume_path} is from stage '{obj.get('stage')}', which "
                    f"this run does not have ({', '.join(self.stages)})."
                )
            self._resumed = obj
        return self._resumed

    def restore(self, total: int, **objects: Any) -> int:
        """Load the ``--resume`` file into ``objects`` (in place); return the step to start from.

        Returns 0 without a resume file, ``total`` for a stage the file shows complete."""
        obj = self.load_resume()
        if obj is None:
            return 0
        here, there = self.stages.index(self.stage), self.stages.index(obj["stage"])
        if here != there:
            return total if here < there else 0
        missing = sorted(set(objects) - set(obj["objects"]))
        if missing:
            raise UserInputError(
                f"--resume file {self.resume_path} lacks {', '.join(missing)} for stage '{self.stage}'."
            )
        try:
            for name, target in objects.items():
                _restore(target, obj["objects"][name], name)
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            first = str(e).splitlines()[0]
            raise UserInputError(
                f"--resume file {self.resume_path} does not fit this run's model or settings ({first[:150]})."
            ) from None
        set_rng_state(obj["rng"])
        step = int(obj["step"])
        if step > total:
            raise UserInputError(
                f"--resume file {self.resume_path} is at step {step} of stage '{self.stage}', "
                f"past this run's {total} steps; resume with the same --epochs/options."
            )
        return step

    def due(self, step: int) -> bool:
        if self.every_steps is not None and step % self.every_steps == 0:
            return True
        return (
            self.every_seconds is not None
            and time.monotonic() - self._last_save >= self.every_seconds
        )

    def step(self, step: int, **objects: Any) -> None:
        """Call after step ``step`` (1-based count of complete steps); saves when due."""
        from plugins.reporting import active_run_dir

        run_dir = active_run_dir()
        if run_dir is not None:
            run_dir.mark_started()
        if self.path is not None and self.due(step):
            self.save(step, **objects)

    def save(self, step: int, **objects: Any) -> None:
        if self.path is None:
            return
        from plugins.reporting import atomic_write_bytes

        state = {
            "format": FORMAT,
            "method": self.method,
            "stage": self.stage,
            "step": int(step),
            "objects": {k: _state_of(v) for k, v in objects.items()},
            "rng": rng_state(),
        }
        atomic_write_bytes(self.path, lambda tmp: torch.save(state, tmp))
        self._last_save = time.monotonic()
        self.saved_steps.append(int(step))


def check_resumed_permutation(
    perm: torch.Tensor, n: int, start: int, steps: int, checkpointer: Checkpointer | None
) -> None:
    """A run resumed inside an epoch reuses that epoch's saved permutation, which only fits the
    same number of training images."""
    if checkpointer is not None and start % steps and len(perm) != n:
        raise UserInputError(
            f"--resume file {checkpointer.resume_path} was written for {len(perm)} training images, "
            f"this run has {n}; resume with the same --data and options."
        )
