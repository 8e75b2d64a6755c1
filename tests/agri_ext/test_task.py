"""CLAWSTask, the Lightning task of CLAWS (issue 20), on the shared Plant Seedlings crops (the
scikit-learn digits when that folder is absent).

1. DDP: two gloo processes, each with half of one fixed batch (fixed views), take one optimisation
   step of ``training_step`` through ``DistributedDataParallel`` with global BatchNorm
   (:func:`plugins.distributed.convert_global_batchnorm`, ``SyncBatchNorm`` semantics on CPU); the
   parameters and BN buffers must equal one process's step on the whole batch. The batch is chosen
   so that every class has samples on both ranks, and the check must fail when the embeddings and
   weak labels are not gathered or BN is per rank.
2. Paper-faithful: the same epochs under a Lightning ``Trainer`` (``CLAWSDataModule`` batches) give
   bit for bit ``train_claws``'s losses and parameters (same seed, data and augmentations).
3. ``bf16-mixed`` trains on CPU and the loss is computed in float32.
4. ``fast_dev_run`` with :class:`plugins.monitoring.CollapseMonitor`.
"""

from __future__ import annotations

import functools

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from agri_ext.config import CLAWSConfig
from agri_ext.datamodule import CLAWSBatchSampler, CLAWSDataModule
from agri_ext.mask import compute_masks
from agri_ext.task import CLAWSTask
from agri_ext.train import train_claws
from plugins.data import ImageTensorDataset, load_digits, load_image_folder, shared_path
from plugins.distributed import convert_global_batchnorm
from plugins.monitoring import CollapseMonitor
from plugins.testing import cpu_trainer, lightning_ddp_trainer, run_gloo
from plugins.testing import max_state_diff as _max_diff

WORLD = 2
SIZE = 24
TINY = dict(widths=(4, 8, 8), projection_dim=16)
# each: the CLAWSTask settings and the batch it steps on
CONFIGS = {
    "within-mask": dict(),  # CLAWS: pixel mask, two encoders, class-masked NT-Xent
    "supcon-feature": dict(contrast="supcon", mask="feature"),  # positives = same-class samples
    "within-batch": dict(within_class="batch"),  # class-homogeneous batch, plain NT-Xent
}
VARIANTS = ("synced", "no_gather", "local_bn")
# Adam's first step is lr * g / (|g| + eps): near-zero gradients turn float32 rounding (a different
# summation order on two processes) into differences up to lr, so the DDP check runs in float64.
DTYPE = torch.float64


@functools.cache
def _data() -> ImageTensorDataset:
    """Up to 8 images of each of 4 seedling classes at 24 px (digits without the shared data)."""
    root = shared_path("crops", "train", required=False)
    if root is None:
        d = load_digits(size=SIZE)
        keep = torch.cat([torch.nonzero(d.labels == c).flatten()[:8] for c in range(4)])
        return d.subset(keep)
    d = load_image_folder(root, size=SIZE, limit_per_class=8)
    return d.subset(torch.nonzero(d.labels < 4).flatten())


def _ddp_batch(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixed configs: 16 images, 4 classes x 4, interleaved so that each class has 2 samples on
    each rank. ``within-batch``: 8 images of class 0 (a class-homogeneous global batch)."""
    d = _data()
    if name == "within-batch":
        idx = torch.nonzero(d.labels == 0).flatten()[:8]
    else:
        per_class = torch.stack([torch.nonzero(d.labels == c).flatten()[:4] for c in range(4)])
        idx = per_class.T.reshape(-1)  # c0 c1 c2 c3 c0 c1 ...
    return d.images[idx].to(DTYPE), d.labels[idx]


class _FixedViews(nn.Module):
    """Deterministic views: the image, and the masked image's dimmed mirror image."""

    def forward(self, x: torch.Tensor, masks: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        x_c = x * masks.to(x.dtype) if masks is not None else x
        return x, 0.9 * x_c.flip(-1) + 0.05


class _Step(nn.Module):
    """What Lightning's DDP wraps: ``forward(batch)`` runs the task's ``training_step``."""

    def __init__(self, task: nn.Module):
        super().__init__()
        self.task = task

    def forward(self, batch):
        return self.task.training_step(batch, 0)["loss"]


def _task(name: str, gather: bool = True) -> CLAWSTask:
    torch.manual_seed(0)
    task = CLAWSTask(
        in_channels=_data().images.shape[1],
        augment=_FixedViews(),
        gather_distributed=gather,
        **TINY,
        **CONFIGS[name],
    )
    return task.to(DTYPE)


def _state(task: CLAWSTask) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in task.model.state_dict().items()}


def _one_step(task: CLAWSTask, step: nn.Module, batch) -> None:
    opt = task.configure_optimizers()
    opt.zero_grad(set_to_none=True)
    step(batch).backward()
    opt.step()


def _ddp_worker(rank: int) -> dict:
    torch.set_num_threads(1)
    out = {}
    for name in CONFIGS:
        x, y = _ddp_batch(name)
        part = slice(rank * len(y) // WORLD, (rank + 1) * len(y) // WORLD)
        out[name, "labels"] = y[part]
        for variant in VARIANTS:
            task = _task(name, gather=variant != "no_gather")
            if variant != "local_bn":
                convert_global_batchnorm(task.model)
            step = DistributedDataParallel(_Step(task))
            _one_step(task, step, (x[part], y[part]))
            out[name, variant] = _state(task)
    return out


@pytest.fixture(scope="module")
def ranks() -> list[dict]:
    return run_gloo(_ddp_worker, WORLD)


@pytest.mark.distributed
@pytest.mark.parametrize("name", CONFIGS)
def test_ddp_step_equals_single_process_step(ranks, name):
    # every class of the batch has samples on both ranks: its same-class columns (supcon: its
    # positives) are split across the ranks
    on_rank = [set(r[name, "labels"].tolist()) for r in ranks]
    assert on_rank[0] == on_rank[1] and len(on_rank[0]) == (1 if name == "within-batch" else 4)
    task = _task(name)
    start = _state(task)
    _one_step(task, _Step(task), _ddp_batch(name))
    ref = _state(task)
    assert _max_diff(ref, start) > 1e-4  # the step moved the parameters
    assert any("running_var" in k for k in ref)  # BN buffers are compared too
    for r in ranks:  # every rank ends with the single-process parameters and BN statistics
        assert _max_diff(r[name, "synced"], ref) < 1e-5
    # the check has teeth: without the gather of embeddings and labels, or with per-rank BN, the
    # step differs
    assert _max_diff(ranks[0][name, "no_gather"], ref) > 1e-4
    assert _max_diff(ranks[0][name, "local_bn"], ref) > 1e-4


def _lightning_ddp_worker(rank: int) -> dict:
    """One step of each config under ``Trainer(strategy="ddp", devices=2)`` (Lightning joins the
    process group ``run_gloo`` made, as an externally launched job), BN synchronised by the
    engine's ``GlobalBatchNormSync``, on this rank's half of the fixed batch."""
    from torch.utils.data import DataLoader, TensorDataset

    from plugins.distributed import revert_global_batchnorm

    torch.set_num_threads(1)
    out = {}
    for name in CONFIGS:
        x, y = _ddp_batch(name)
        part = slice(rank * len(y) // WORLD, (rank + 1) * len(y) // WORLD)
        task = _task(name)
        trainer = lightning_ddp_trainer(rank, WORLD, precision="64-true")
        loader = DataLoader(TensorDataset(x[part], y[part]), batch_size=len(y) // WORLD)
        trainer.fit(task, loader)
        assert trainer.global_step == 1 and trainer.world_size == WORLD
        revert_global_batchnorm(task)
        out[name] = _state(task)
    return out


@pytest.mark.distributed
def test_lightning_ddp_strategy_step_equals_single_process_step():
    ranks = run_gloo(_lightning_ddp_worker, WORLD)
    for name in CONFIGS:
        task = _task(name)
        _one_step(task, _Step(task), _ddp_batch(name))
        ref = _state(task)
        for r in ranks:
            assert _max_diff(r[name], ref) < 1e-5, name


# -- the sampler under DDP ------------------------------------------------------------------------
@pytest.mark.parametrize("homogeneous", [True, False])
def test_batch_sampler_shards_each_global_batch_over_the_ranks(homogeneous):
    labels = _data().labels
    one = CLAWSBatchSampler(labels, 6, homogeneous, seed=1, num_replicas=1, rank=0)
    shards = [CLAWSBatchSampler(labels, 6, homogeneous, 1, num_replicas=2, rank=r) for r in (0, 1)]
    for epoch in (0, 1):
        for s in (one, *shards):
            s.set_epoch(epoch)
        full = list(one)
        parts = [list(s) for s in shards]
        assert len(parts[0]) == len(parts[1]) == len(shards[0]) > 0
        # rank 0 then rank 1 = the single-process batch cut to an even size; equal shapes per step
        kept = [b[: len(b) // 2 * 2] for b in full if len(b) >= 2]
        assert len(kept) == len(parts[0])
        for b, p0, p1 in zip(kept, *parts, strict=True):
            assert torch.equal(torch.cat([p0, p1]), b) and len(p0) == len(p1)
            if homogeneous:  # a global batch holds one weak class over both ranks
                assert labels[b].unique().numel() == 1
    # the epochs differ, and each depends only on (seed, epoch)
    one.set_epoch(0)
    first = [b.tolist() for b in one]
    one.set_epoch(1)
    assert [b.tolist() for b in one] != first
    one.set_epoch(0)
    assert [b.tolist() for b in one] == first


def test_batch_mode_refuses_a_mixed_batch():
    task = CLAWSTask(in_channels=3, within_class="batch", **TINY)
    x, y = _ddp_batch("within-mask")
    with pytest.raises(ValueError, match="class-homogeneous"):
        task.training_step((x.float(), y))


# -- paper-faithful: the same epochs as train_claws -----------------------------------------------
def _trainer(tmp_path, **kwargs) -> Trainer:
    return cpu_trainer(tmp_path, **kwargs)


class _Losses(Callback):
    def __init__(self):
        self.losses: list[float] = []
        self.dtypes: list[torch.dtype] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))
        self.dtypes.append(outputs["loss"].dtype)


@pytest.mark.parametrize("within", ["mask", "batch", "mask-stored"])
def test_lightning_epochs_equal_train_claws(tmp_path, within):
    """Two epochs (class-masked or class-homogeneous batches; masks computed per batch by the task,
    or stored and served as ``(images, labels, masks)``)."""
    d = _data()
    masks = compute_masks(d.images)[0] if within == "mask-stored" else None
    kw = dict(epochs=2, batch_size=8, within_class=within.split("-")[0], **TINY)
    model, losses, _ = train_claws(
        d, CLAWSConfig(**kw), masks=masks, device="cpu", seed=3, progress=False
    )
    torch.manual_seed(3)  # train_claws seeds the global RNG (initialisation, views) with its seed
    task = CLAWSTask(in_channels=d.images.shape[1], **kw)
    seen = _Losses()
    trainer = _trainer(tmp_path, max_epochs=2, callbacks=[seen])
    trainer.fit(task, CLAWSDataModule.for_config(d, task.config, seed=3, masks=masks))
    assert len(losses) == trainer.global_step > 2
    assert seen.losses == losses  # same batches, views and steps: bit for bit
    ref = model.state_dict()
    for name, value in task.model.state_dict().items():
        assert torch.equal(value, ref[name]), name
    if masks is None:  # the task computed the masks: all plants found (none fell back)
        assert float(trainer.callback_metrics["mask_fallbacks"]) == 0
    else:
        assert "mask_fallbacks" not in trainer.callback_metrics


# -- bf16-mixed -----------------------------------------------------------------------------------
def test_bf16_mixed_trains_and_loss_stays_float32(tmp_path, monkeypatch):
    import agri_ext.model as claws_model

    loss_fn, seen = claws_model.within_class_nt_xent, []

    def spy(z1, z2, *args, **kwargs):
        loss = loss_fn(z1, z2, *args, **kwargs)
        seen.append((z1.dtype, loss.dtype, torch.is_autocast_enabled("cpu")))
        return loss

    monkeypatch.setattr(claws_model, "within_class_nt_xent", spy)
    d = _data()
    torch.manual_seed(0)
    task = CLAWSTask(in_channels=d.images.shape[1], batch_size=8, **TINY)
    before = _state(task)
    losses = _Losses()
    trainer = _trainer(tmp_path, precision="bf16-mixed", max_steps=2, callbacks=[losses])
    trainer.fit(task, CLAWSDataModule.for_config(d, task.config))
    assert trainer.global_step == 2 and len(seen) == 2
    # autocast was on and the network ran in bf16, yet the loss was computed in float32
    assert all(z == torch.bfloat16 and autocast for z, _, autocast in seen)
    assert all(loss == torch.float32 for _, loss, _ in seen)
    assert losses.dtypes == [torch.float32, torch.float32]
    assert all(torch.isfinite(torch.tensor(losses.losses)))
    after = _state(task)
    assert all(after[k].dtype == before[k].dtype for k in before)  # master weights stay float32
    assert _max_diff(after, before) > 0


# -- fit with CollapseMonitor ---------------------------------------------------------------------
@pytest.mark.parametrize("probe", [True, False], ids=["probe", "training-batch"])
def test_fast_dev_run_with_collapse_monitor(tmp_path, probe):
    d = _data()
    monitor = CollapseMonitor(
        every_n_steps=1,
        on="representation",
        probe_batch=d.images[-24:] if probe else None,
        run_dir=tmp_path / "collapse",
        plot=probe,
    )
    torch.manual_seed(0)
    task = CLAWSTask(in_channels=d.images.shape[1], batch_size=16, **TINY)
    trainer = _trainer(tmp_path, fast_dev_run=1, callbacks=[monitor])
    trainer.fit(task, CLAWSDataModule.for_config(d, task.config))
    assert trainer.global_step == 1
    assert [h["step"] for h in monitor.tracker.history] == [1.0]
    stats = monitor.tracker.history[0]
    assert stats["dim"] == task.model.feat_dim
    assert 1.0 <= stats["effective_rank"] <= stats["dim"]
    logged = trainer.callback_metrics
    assert "collapse/representation/effective_rank" in logged and "train_loss" in logged
    if probe:
        assert (tmp_path / "collapse" / "collapse_spectrum_representation.png").is_file()


def test_collapse_features_of_each_branch():
    d = _data()
    x = (d.images[:6] * 255).to(torch.uint8)  # uint8 batches are accepted
    for branch in ("image", "crop"):
        torch.manual_seed(0)
        task = CLAWSTask(in_channels=d.images.shape[1], eval_branch=branch, **TINY).eval()
        with torch.no_grad():
            r = task.collapse_features((x, None))
            z = task.collapse_features({"image": x}, on="embedding")
            plain = task.model.features(x.float() / 255, branch)
        assert r.shape == (6, task.model.feat_dim) and z.shape == (6, TINY["projection_dim"])
        # the crop branch sees the masked images (as in training), the image branch the raw ones
        assert torch.allclose(r, plain) == (branch == "image")
