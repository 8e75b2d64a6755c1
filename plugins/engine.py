"""The training engine of the command: a ``lightning.Trainer`` built from the command's flags
(``--devices``, ``--strategy``, ``--precision``, ``--accumulate``, ``--device``), with the run folder's
checkpoints, resume and interrupt handling.

What a method's ``run`` gets from :func:`fit`:

- ``<run>/last.ckpt`` (a Lightning checkpoint, written atomically) every ``--checkpoint-every``, and
  ``--resume`` continuing from one to the same final parameters as an uninterrupted run: the
  shuffling of epoch ``e`` depends only on ``(seed, e)`` (:class:`plugins.data.stream.EpochSampler`),
  a resumed epoch skips the batches already done, and the global RNG (the views) is reseeded before
  every step from ``(seed, step, rank)``;
- Ctrl-C / SIGTERM raised again as ``KeyboardInterrupt`` (Lightning turns it into ``sys.exit``);
- BatchNorm over the global batch under DDP (:class:`GlobalBatchNormSync`, which also works on CPU,
  where ``torch.nn.SyncBatchNorm`` refuses to run);
- ``--strategy ddp --devices N`` launches ``N - 1`` more copies of the command (Lightning's script
  launcher); they train and exit, only rank 0 writes the run folder (:func:`is_worker`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import warnings
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.plugins.layer_sync import LayerSync

from plugins.distributed import convert_global_batchnorm, revert_global_batchnorm
from plugins.engine_settings import (
    PRECISIONS,
    RUN_DIR_ENV,
    STRATEGIES,
    EngineSettings,
    WorkerFinished,
    is_worker,
    per_rank_batch,
)
from plugins.errors import UserInputError, check_finite_loss
from plugins.reporting import RunContext, active_run_dir, atomic_write_bytes

__all__ = [
    "EngineSettings",
    "PRECISIONS",
    "STRATEGIES",
    "GlobalBatchNormSync",
    "LossRecorder",
    "RunHooks",
    "WorkerFinished",
    "fit",
    "is_worker",
    "per_rank_batch",
    "RUN_DIR_ENV",
]


class GlobalBatchNormSync(LayerSync):
    """``Trainer(plugins=[GlobalBatchNormSync()])``: BatchNorm over the global batch under DDP
    (:class:`plugins.distributed.GlobalBatchNorm`), on CPU as on GPU."""

    def apply(self, model: torch.nn.Module) -> torch.nn.Module:
        return convert_global_batchnorm(model)

    def revert(self, model: torch.nn.Module) -> torch.nn.Module:
        return revert_global_batchnorm(model)


class LossRecorder(Callback):
    """Per-step training losses of this rank (``training_step``'s ``loss_key``, default ``loss``)
    and any ``extra`` scalar outputs; kept in Lightning checkpoints, so a resumed run plots them
    all."""

    def __init__(self, loss_key: str = "loss", extra: tuple[str, ...] = ()) -> None:
        self.loss_key = loss_key
        self.losses: list[float] = []
        self.extra: dict[str, list[float]] = {k: [] for k in extra}

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get(self.loss_key) if isinstance(outputs, dict) else outputs
        if loss is not None:
            self.losses.append(float(loss))
        if isinstance(outputs, dict):
            for k, values in self.extra.items():
                if k in outputs:
                    values.append(float(outputs[k]))

    def state_dict(self) -> dict[str, Any]:
        return {"losses": list(self.losses), "extra": {k: list(v) for k, v in self.extra.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.losses = [float(v) for v in state_dict.get("losses", [])]
        for k, v in state_dict.get("extra", {}).items():
            self.extra[k] = [float(x) for x in v]


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """The global RNG seed of optimisation step ``step`` on ``rank``: a function of the three only."""
    return int(np.random.SeedSequence([int(seed), int(step), int(rank)]).generate_state(1)[0])


class RunHooks(Callback):
    """The command's side of a Lightning fit: marks the run folder started when training starts,
    tags checkpoints with the method (``--resume`` refuses other methods' files), reseeds the global
    RNG before each batch from ``(seed, global step, rank)`` when ``seed`` is given (the views of a
    resumed run equal an uninterrupted run's), and keeps the exception Lightning swallows on
    Ctrl-C."""

    def __init__(self, method: str, seed: int | None = None) -> None:
        self.method = method
        self.seed = seed
        self.exception: BaseException | None = None

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        run_dir = active_run_dir()
        if run_dir is not None and trainer.is_global_zero:
            run_dir.mark_started()

    def on_train_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.seed is not None:
            step = trainer.fit_loop.epoch_loop.batch_progress.total.ready
            torch.manual_seed(step_seed(self.seed, step, trainer.global_rank))

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # a NaN loss would train on silently and end in an evaluation of NaN weights
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        value = float(loss)
        if trainer.world_size > 1:  # every rank stops together, or the others wait forever
            diverged = trainer.strategy.reduce_boolean_decision(not math.isfinite(value), all=False)
            value = float("nan") if diverged and math.isfinite(value) else value
        step = trainer.fit_loop.epoch_loop.batch_progress.total.ready - 1
        check_finite_loss(value, step, trainer.current_epoch)

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        checkpoint["method"] = self.method

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.exception = exception


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written to a temporary name and renamed: never a half-written file."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        atomic_write_bytes(Path(path), lambda tmp: torch.save(checkpoint, tmp))


def periodic_checkpoint(ctx: RunContext) -> ModelCheckpoint | None:
    """``<run>/last.ckpt`` every N steps or T seconds (``--checkpoint-every``); ``None`` when off."""
    steps, seconds = ctx.checkpoint_every
    if not steps and not seconds:
        return None
    return ModelCheckpoint(
        dirpath=str(ctx.run_dir.path),
        filename="last",
        save_last=True,
        save_top_k=0,
        every_n_train_steps=steps or None,
        train_time_interval=timedelta(seconds=seconds) if not steps and seconds else None,
        enable_version_counter=False,
    )


def position(trainer: Trainer) -> tuple[int, int]:
    """``(epoch, batches done in it)`` of a trainer about to iterate its training data, from its
    optimiser steps alone (``accumulate_grad_batches`` batches per step).

    The samplers of a resumable fit read this rather than the epoch Lightning passes to
    ``set_epoch``: a checkpoint written after the last batch of an epoch comes back with that
    epoch unfinished, and Lightning then starts the next epoch with the previous epoch's number."""
    per_epoch = trainer.num_training_batches
    if not per_epoch or per_epoch == float("inf"):
        return trainer.current_epoch, 0
    k = trainer.accumulate_grad_batches
    steps_per_epoch = math.ceil(per_epoch / k)
    epoch, steps = divmod(trainer.global_step, steps_per_epoch)
    return epoch, steps * k


def _accelerator(device: torch.device) -> str:
    return "gpu" if device.type == "cuda" else "cpu"


def _devices(device: torch.device, settings: EngineSettings) -> Any:
    if device.type == "cuda" and device.index is not None and settings.devices == 1:
        return [device.index]
    return settings.devices


def fit(
    ctx: RunContext,
    task: LightningModule,
    datamodule: LightningDataModule | None = None,
    *,
    train_dataloaders: Any = None,
    val_dataloaders: Any = None,
    max_epochs: int | None = None,
    max_steps: int = -1,
    seed: int | None = None,
    callbacks: list[Callback] | None = None,
    val_batches: int | float | None = 0,
    resumable: bool = True,
    settings: EngineSettings | None = None,
    run_dir: Any = None,
    recorder: LossRecorder | None = None,
) -> list[float]:
    """Train ``task`` on ``datamodule`` (or on ``train_dataloaders`` / ``val_dataloaders``) with
    the command's engine flags; returns this rank's per-step losses.

    ``resumable``: ``<run>/last.ckpt`` as ``--checkpoint-every`` says, and ``--resume`` continues
    from one. ``seed`` reseeds the global RNG per step, so that the resumed run ends with the same
    parameters (see the module docstring); a datamodule's train sampler should then be an
    :class:`~plugins.data.stream.EpochSampler` (the datamodules of :mod:`plugins.data.stream` use
    it), or a plain loader's sampler must itself continue from ``trainer.global_step``.
    ``val_batches`` is Lightning's ``limit_val_batches`` (``None``: all). ``run_dir`` (default
    ``ctx.run_dir``) takes ``last.ckpt``: one folder per model when a reproduction trains several,
    which then resume from nothing. ``recorder`` records more than the loss. In a copy launched for
    ``ddp`` (rank > 0) this raises :class:`WorkerFinished` after training.
    """
    settings = settings or getattr(ctx, "engine", None) or EngineSettings()
    settings.check(torch.device(ctx.device))
    recorder = recorder or LossRecorder()
    hooks = RunHooks(ctx.method, seed)
    resume = ctx.resume if run_dir is None else None
    if run_dir is not None:
        from dataclasses import replace

        ctx = replace(ctx, run_dir=run_dir, option_set=None)
    all_callbacks: list[Callback] = [recorder, hooks, *(callbacks or [])]
    periodic = periodic_checkpoint(ctx) if resumable else None
    if periodic is not None:
        all_callbacks.append(periodic)
    run_path = ctx.run_dir.ensure()
    if settings.distributed and not is_worker():
        os.environ[RUN_DIR_ENV] = str(run_path)  # the launched copies inherit it
    with _quiet_lightning():
        trainer = _trainer(
            ctx, settings, all_callbacks, periodic, run_path, max_epochs, max_steps, val_batches
        )
    if seed is not None and hasattr(datamodule, "resume_position"):
        datamodule.resume_position = lambda: position(trainer)
    try:
        sigint = signal.getsignal(signal.SIGINT)
    except ValueError:
        sigint = None
    try:
        with _quiet_lightning():
            trainer.fit(
                task,
                train_dataloaders=train_dataloaders,
                val_dataloaders=val_dataloaders,
                datamodule=datamodule,
                ckpt_path=resume if resumable else None,
                weights_only=True,
            )
    except SystemExit:
        if not trainer.interrupted:
            raise
        if sigint is not None:  # Lightning ignores further Ctrl-C after the first
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(signal.SIGINT, sigint)
        if isinstance(hooks.exception, KeyboardInterrupt):  # SIGTERM's subclass included
            raise hooks.exception from None
        raise KeyboardInterrupt from None
    finally:
        if hasattr(datamodule, "resume_position"):
            datamodule.resume_position = None
    if trainer.global_rank != 0:
        raise WorkerFinished
    if settings.distributed:
        revert_global_batchnorm(task)
    return recorder.losses


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Lightning's informational lines (available accelerators, tips, "fit stopped") and the
    notices that do not apply to the command's own loaders stay out of the user's terminal;
    its warnings that matter still show."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for message in _NOTICES:
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


_NOTICES = (
    ".*You passed in a `val_dataloader` but have no `validation_step`.*",
    ".*does not have many workers which may be a bottleneck.*",
    ".*The number of training batches .* is smaller than the logging interval.*",
    ".*callbacks used to create the checkpoint need to be provided.*",
    ".*your dataloader is not resumable.*",
    ".*LightningCLI's args parameter is intended to run from within Python.*",  # fit() makes the sampler skip the done batches
)


def _trainer(
    ctx: RunContext,
    settings: EngineSettings,
    callbacks: list[Callback],
    periodic: ModelCheckpoint | None,
    run_path: Path,
    max_epochs: int | None,
    max_steps: int,
    val_batches: int | float | None,
) -> Trainer:
    from plugins.progress import enabled

    return Trainer(
        max_epochs=max_epochs,
        max_steps=max_steps,
        accelerator=_accelerator(torch.device(ctx.device)),
        devices=_devices(torch.device(ctx.device), settings),
        strategy=settings.strategy,
        precision=settings.precision,
        accumulate_grad_batches=settings.accumulate,
        logger=False,
        enable_checkpointing=periodic is not None,
        enable_model_summary=False,
        enable_progress_bar=ctx.progress and enabled() and not is_worker(),
        limit_val_batches=val_batches,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO(), *([GlobalBatchNormSync()] if settings.distributed else [])],
        default_root_dir=str(run_path),
    )


def lightning_cli(args: list[str]) -> int:
    """``contrastive-plugins fit --config FILE.yaml [...]``: Lightning's CLI over any task and
    datamodule named by ``class_path`` (the same experience as ``torchgeo fit``); the shipped
    configs are ``plugins/methods/<name>/configs/*.yaml`` and ``agri_ext/configs/*.yaml``.

    A bad option, a class that cannot be built or an accelerator this machine lacks is one sentence
    (:class:`UserInputError`), not a usage page or a traceback.
    """
    run_lightning_cli(args)
    return 0


def run_lightning_cli(args: list[str]) -> Any:
    """:func:`lightning_cli`'s work; returns the ``LightningCLI`` (its ``trainer`` and ``model``)."""
    from jsonargparse import ArgumentError
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from lightning.pytorch.cli import LightningCLI

    with _quiet_lightning():
        try:
            return LightningCLI(
                model_class=LightningModule,
                datamodule_class=LightningDataModule,
                subclass_mode_model=True,
                subclass_mode_data=True,
                args=["fit", *args],
                parser_kwargs={"exit_on_error": False},
                save_config_kwargs={"overwrite": True},
            )
        except ArgumentError as e:
            raise UserInputError(_one_line(str(e))) from None
        except MisconfigurationException as e:  # e.g. --trainer.accelerator gpu without one
            raise UserInputError(f"the trainer cannot start: {_one_line(str(e))}") from None


def _one_line(message: str) -> str:
    """jsonargparse's nested report as one sentence: the innermost key and its error."""
    lines = [ln.strip(" -") for ln in message.strip().splitlines() if ln.strip(" -")]
    skip = (
        "Does not validate",
        "Subtypes",
        "Errors",
        "Given value",
        "Expected a <class 'NoneType'>",
    )
    lines = [ln for ln in lines if not ln.startswith(skip)]
    keys = [i for i, ln in enumerate(lines) if ln.startswith("Parser key")]
    if keys and keys[-1] + 1 < len(lines):  # the innermost key and what was wrong with it
        text = f"{lines[keys[-1]].rstrip(':')}: {lines[keys[-1] + 1]}"
    else:
        text = " ".join(lines[:2])
    return text.rstrip("!. ") + "."
