"""The command's engine flags (``--devices``, ``--strategy``, ``--precision``, ``--accumulate``),
kept apart from :mod:`plugins.engine` so that parsing them imports no Lightning."""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from plugins.errors import UserInputError

__all__ = [
    "ENGINE_FLAGS",
    "autocast",
    "EngineSettings",
    "PRECISIONS",
    "RUN_DIR_ENV",
    "STRATEGIES",
    "WorkerFinished",
    "is_worker",
    "per_rank_batch",
]

#: the flags, by their :class:`EngineSettings` field names
ENGINE_FLAGS = ("devices", "strategy", "precision", "accumulate")
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "64-true")
STRATEGIES = ("auto", "ddp")
#: rank 0 names its run folder here, so the copies Lightning launches for ``ddp`` find it
RUN_DIR_ENV = "CONTRASTIVE_PLUGINS_RUN_DIR"


@dataclass(frozen=True)
class EngineSettings:
    """The command's engine flags (Lightning's names and defaults)."""

    devices: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    accumulate: int = 1

    def check(self, device: torch.device) -> None:
        """One sentence for a combination this machine cannot run."""
        if self.precision not in PRECISIONS:
            raise UserInputError(
                f"--precision {self.precision}: expected one of {', '.join(PRECISIONS)}."
            )
        if self.strategy not in STRATEGIES:
            raise UserInputError(
                f"--strategy {self.strategy}: expected one of {', '.join(STRATEGIES)}."
            )
        if self.precision == "16-mixed" and device.type != "cuda":
            raise UserInputError("--precision 16-mixed needs a CUDA device; on CPU use bf16-mixed.")
        if device.type == "cuda" and self.devices > torch.cuda.device_count():
            raise UserInputError(
                f"--devices {self.devices} asks for more GPUs than the "
                f"{torch.cuda.device_count()} this machine has."
            )

    @property
    def distributed(self) -> bool:
        return self.devices > 1


def is_worker() -> bool:
    """True in a copy of the command that Lightning's ``ddp`` launcher started (rank > 0)."""
    return os.environ.get(RUN_DIR_ENV) is not None and os.environ.get("LOCAL_RANK", "0") != "0"


class WorkerFinished(BaseException):
    """Raised in a launched copy (rank > 0) after training: the copy exits without writing."""


def per_rank_batch(batch_size: int, devices: int) -> int:
    """The per-process batch that keeps the global batch at ``batch_size`` under ``devices``
    processes; one sentence when it cannot be split evenly."""
    if devices <= 1:
        return batch_size
    if batch_size < devices or batch_size % devices:
        raise UserInputError(
            f"batch_size {batch_size} cannot be split evenly over {devices} processes; "
            f"use a multiple of {devices} (the batch is global, as in the papers)."
        )
    return batch_size // devices


def batch_for(batch_size: int, n_train: int) -> int:
    """``batch_size``, or the ``n_train`` training images when there are fewer, said once: a batch
    larger than the data is not an error (the small embedded sets meet it) but the batch a run
    trains with is never changed silently."""
    if batch_size > n_train:
        warnings.warn(
            f"batch_size {batch_size} is larger than the {n_train} training images; every step "
            f"trains on all {n_train}.",
            stacklevel=2,
        )
        return n_train
    return batch_size


def unsupported_flags(accepted: tuple[str, ...], settings: EngineSettings) -> list[str]:
    """The engine flags ``settings`` changes from their defaults that a method does not take."""
    default = EngineSettings()
    return [
        name
        for name in ENGINE_FLAGS
        if getattr(settings, name) != getattr(default, name) and name not in accepted
    ]


def autocast(ctx: Any) -> Any:
    """Autocast context for the methods with their own loops (DCC, ARIEL): ``--precision
    bf16-mixed`` runs their forward passes in bfloat16 (losses stay float32, see
    :func:`plugins.losses.full_precision`); 32-true is a no-op."""
    settings = getattr(ctx, "engine", None) or EngineSettings()
    device = torch.device(ctx.device)
    if settings.precision == "bf16-mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if settings.precision == "16-mixed":
        return torch.autocast(device.type, dtype=torch.float16)
    if settings.precision == "64-true":
        raise UserInputError(
            f"{ctx.method} trains with its own loop, which takes --precision 32-true, bf16-mixed "
            "or 16-mixed (autocast), not 64-true."
        )
    return contextlib.nullcontext()
