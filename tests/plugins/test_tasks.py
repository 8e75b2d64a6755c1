"""The Lightning tasks of the generic methods: SimCLRTask and DirectCLRTask.

1. DDP: two gloo processes, each with half of one fixed batch of real digits (fixed views), take one
   optimisation step of ``training_step`` through ``DistributedDataParallel`` with synchronised
   BatchNorm; the parameters and BN buffers must equal one process's step on the whole batch. The
   same check must fail when the negatives are not gathered or BN is not synchronised.
2. ``bf16-mixed`` trains each task on CPU and the losses are computed in float32.
3. ``fast_dev_run`` fits each task with :class:`plugins.monitoring.CollapseMonitor` attached.

``torch.nn.SyncBatchNorm`` refuses CPU tensors (torch 2.x: "expected input tensor to be on GPU"), so
the DDP test synchronises BN with :func:`plugins.distributed.convert_global_batchnorm`: the global
batch mean and variance, all-reduced with gradient, exactly what ``SyncBatchNorm`` computes on GPUs
(the engine's ``GlobalBatchNormSync`` applies it under ``--strategy ddp``).
"""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset

from plugins.data import load_digits
from plugins.distributed import convert_global_batchnorm
from plugins.methods.directclr.task import DirectCLRTask
from plugins.methods.simclr.task import SimCLRTask
from plugins.monitoring import CollapseMonitor
from plugins.testing import cpu_trainer, lightning_ddp_trainer, run_gloo
from plugins.testing import max_state_diff as _max_diff

WORLD = 2
BATCH = 32  # 16 images per rank
METHODS = ("simclr", "directclr")
VARIANTS = ("synced", "no_gather", "local_bn")
# Adam's first step is lr * g / (|g| + eps): on gradients near zero it turns float32 rounding (the
# summation order differs between one process and two) into differences up to lr, so SimCLR (Adam)
# is compared in float64; DirectCLR (LARS, linear in g) matches to 1e-7 in float32.
DTYPE = {"simclr": torch.float64, "directclr": torch.float32}


class _FixedViews(nn.Module):
    """Deterministic views, identical in every run: the images and their dimmed mirror image."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, 0.9 * x.flip(-1) + 0.05


class _Step(nn.Module):
    """What Lightning's DDP wraps: ``forward(batch)`` runs the task's ``training_step``."""

    def __init__(self, task: nn.Module):
        super().__init__()
        self.task = task

    def forward(self, batch):
        return self.task.training_step(batch, 0)["loss"]


def _task(method: str, gather: bool = True):
    torch.manual_seed(0)
    if method == "simclr":
        task = SimCLRTask(in_channels=1, augment=_FixedViews(), gather_distributed=gather)
    else:
        task = DirectCLRTask(
            in_channels=1, num_classes=10, augment=_FixedViews(), gather_distributed=gather
        )
    return task.to(DTYPE[method])


def _batch(method: str) -> tuple[torch.Tensor, torch.Tensor]:
    d = load_digits(size=16)
    return d.images[:BATCH].to(DTYPE[method]), d.labels[:BATCH]


def _state(task) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in task.model.state_dict().items()}


def _one_step(task, step: nn.Module, batch) -> None:
    opt = task.configure_optimizers()["optimizer"]
    opt.zero_grad(set_to_none=True)
    step(batch).backward()
    opt.step()


def _ddp_worker(rank: int) -> dict:
    torch.set_num_threads(1)
    part = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
    out = {}
    for method in METHODS:
        x, y = _batch(method)
        for variant in VARIANTS:
            task = _task(method, gather=variant != "no_gather")
            if variant != "local_bn":
                convert_global_batchnorm(task.model)
            step = DistributedDataParallel(_Step(task))
            _one_step(task, step, (x[part], y[part]))
            out[method, variant] = _state(task)
    return out


@pytest.fixture(scope="module")
def ranks() -> list[dict]:
    return run_gloo(_ddp_worker, WORLD)


def _single_process(method: str) -> dict[str, torch.Tensor]:
    task = _task(method)
    _one_step(task, _Step(task), _batch(method))
    return _state(task)


@pytest.mark.distributed
@pytest.mark.parametrize("method", METHODS)
def test_ddp_step_equals_single_process_step(ranks, method):
    ref = _single_process(method)
    start = _state(_task(method))
    assert _max_diff(ref, start) > 1e-4  # the step moved the parameters
    for r in ranks:  # every rank ends with the single-process parameters and BN statistics
        assert _max_diff(r[method, "synced"], ref) < 1e-5
    # the check has teeth: without the gather, or with per-rank BN, the step differs
    assert _max_diff(ranks[0][method, "no_gather"], ref) > 1e-4
    assert _max_diff(ranks[0][method, "local_bn"], ref) > 1e-4


# -- bf16-mixed -----------------------------------------------------------------------------------
def _loader(n: int = 64, batch_size: int = 32) -> DataLoader:
    d = load_digits(size=16)
    return DataLoader(TensorDataset(d.images[:n], d.labels[:n]), batch_size=batch_size)


def _trainer(tmp_path, **kwargs) -> Trainer:
    return cpu_trainer(tmp_path, **kwargs)


def _new_task(method: str):
    torch.manual_seed(0)
    if method == "simclr":
        return SimCLRTask(in_channels=1, projection_dim=32)
    return DirectCLRTask(in_channels=1, num_classes=10)


class _LossDtype(Callback):
    def __init__(self):
        self.dtypes: list[torch.dtype] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.dtypes.append(outputs["loss"].dtype)


@pytest.mark.parametrize("method", METHODS)
def test_bf16_mixed_trains_and_losses_stay_float32(tmp_path, monkeypatch, method):
    import plugins.methods.directclr.model as directclr_model
    import plugins.methods.simclr.model as simclr_model

    module, name = (
        (simclr_model, "nt_xent") if method == "simclr" else (directclr_model, "directclr_loss")
    )
    loss_fn, seen = getattr(module, name), []

    def spy(z1, z2, *args, **kwargs):
        loss = loss_fn(z1, z2, *args, **kwargs)
        seen.append((z1.dtype, loss.dtype, torch.is_autocast_enabled("cpu")))
        return loss

    monkeypatch.setattr(module, name, spy)
    task, dtypes = _new_task(method), _LossDtype()
    before = _state(task)
    trainer = _trainer(tmp_path, precision="bf16-mixed", max_steps=2, callbacks=[dtypes])
    trainer.fit(task, _loader())
    assert trainer.global_step == 2
    assert len(seen) == 2
    # autocast was on and the network ran in bf16, yet the loss was computed in float32
    assert all(z == torch.bfloat16 and autocast for z, _, autocast in seen)
    assert all(loss == torch.float32 for _, loss, _ in seen)
    assert dtypes.dtypes == [torch.float32, torch.float32]
    assert torch.isfinite(trainer.callback_metrics["train_loss"])
    after = _state(task)
    assert all(after[k].dtype == before[k].dtype for k in before)  # master weights stay float32
    assert _max_diff(after, before) > 0


# -- fit with CollapseMonitor ---------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("probe", [True, False], ids=["probe", "training-batch"])
def test_fast_dev_run_with_collapse_monitor(tmp_path, method, probe):
    d = load_digits(size=16)
    monitor = CollapseMonitor(
        every_n_steps=1,
        on="representation",
        probe_batch=d.images[-64:] if probe else None,
        run_dir=tmp_path / "collapse",
        plot=probe,
    )
    task = _new_task(method)
    trainer = _trainer(tmp_path, fast_dev_run=1, callbacks=[monitor])
    trainer.fit(task, _loader())
    assert trainer.global_step == 1
    assert [h["step"] for h in monitor.tracker.history] == [1.0]
    stats = monitor.tracker.history[0]
    dim = task.model.encoder.out_dim if method == "simclr" else task.model.feat_dim
    assert stats["dim"] == dim
    assert 1.0 <= stats["effective_rank"] <= stats["dim"]
    logged = trainer.callback_metrics
    assert "collapse/representation/effective_rank" in logged
    assert "train_loss" in logged
    if probe:
        assert (tmp_path / "collapse" / "collapse_spectrum_representation.png").is_file()


@pytest.mark.parametrize("method", METHODS)
def test_collapse_features_hook(method):
    task = _new_task(method).eval()
    x = (load_digits(size=16).images[:8] * 255).to(torch.uint8)  # uint8 batches are accepted
    with torch.no_grad():
        r = task.collapse_features((x, None))
        z = task.collapse_features({"image": x}, on="embedding")
    assert r.shape[0] == z.shape[0] == 8 and r.ndim == z.ndim == 2
    if method == "directclr":
        assert z.shape[1] == task.model.d0
        torch.testing.assert_close(z, r[:, : task.model.d0])
    else:
        assert z.shape[1] == task.hparams.projection_dim
    assert torch.isfinite(r).all() and torch.isfinite(z).all()


# -- Lightning's own ddp strategy --------------------------------------------------------------------
def _lightning_ddp_worker(rank: int) -> dict:
    """One optimisation step of each task under ``Trainer(strategy="ddp", devices=2)`` on this
    rank's half of the fixed batch, BN synchronised by the engine's ``GlobalBatchNormSync``. The
    process group exists already (``run_gloo``); Lightning joins it as an externally launched
    job (``LOCAL_RANK``/``WORLD_SIZE`` set), so it starts no processes of its own."""
    torch.set_num_threads(1)
    part = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
    out = {}
    for method in METHODS:
        x, y = _batch(method)
        task = _task(method)
        precision = "64-true" if DTYPE[method] == torch.float64 else "32-true"
        trainer = lightning_ddp_trainer(rank, WORLD, precision=precision)
        trainer.fit(task, DataLoader(TensorDataset(x[part], y[part]), batch_size=BATCH // WORLD))
        assert trainer.global_step == 1 and trainer.world_size == WORLD
        from plugins.distributed import revert_global_batchnorm

        out[method] = _state(revert_global_batchnorm(task))
    return out


@pytest.mark.distributed
def test_lightning_ddp_strategy_step_equals_single_process_step():
    ranks = run_gloo(_lightning_ddp_worker, WORLD)
    for method in METHODS:
        ref = _single_process(method)
        for r in ranks:
            assert _max_diff(r[method], ref) < 1e-5, method
