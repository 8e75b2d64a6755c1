"""HCSCTask, the Lightning task of HCSC (Guo et al., CVPR 2022, on MoCo v2).

1. DDP: two gloo processes, each with half of one fixed batch of real digits (fixed views) and the
   same fixed prototypes, take two optimisation steps of ``training_step`` through
   ``DistributedDataParallel`` with SyncBN semantics (:func:`convert_global_batchnorm`, both
   encoders); the query and key encoders, BN buffers and queue must equal one process's steps on the
   whole batch, and the check must fail without the queue gather or without the BN sync. The same
   processes cluster unequal shares of a set: the prototypes must be identical on both ranks and
   equal the k-means of the whole set in one process.
2. ``bf16-mixed`` trains on CPU and the losses are computed in float32.
3. ``fast_dev_run`` with :class:`plugins.monitoring.CollapseMonitor`.
4. Paper-faithful: HCSCTask under a ``Trainer`` gives the parameters, queue and prototypes of the
   hand-written loop :func:`train_hcsc` (same seed, data, batches and views).
5. Checkpoints: the epoch's prototypes load with ``weights_only``; a run resumed at an epoch
   boundary ends with the parameters, queue and prototypes of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset

import plugins.methods.hcsc.model as hcsc_model
import plugins.methods.hcsc.train as hcsc_train
from plugins.checkpoint import load_checkpoint
from plugins.data import load_digits
from plugins.distributed import convert_global_batchnorm
from plugins.errors import UserInputError
from plugins.methods.hcsc import HCSCConfig, train_hcsc
from plugins.methods.hcsc.kmeans import ClusterResult, hierarchical_kmeans
from plugins.methods.hcsc.task import HCSCTask, IndexedDataset
from plugins.monitoring import CollapseMonitor
from plugins.testing import cpu_trainer, lightning_ddp_trainer, run_gloo
from plugins.testing import max_state_diff as _max_diff

WORLD = 2
BATCH = 32  # 16 images per rank
PROTO_N = 64  # samples the fixed prototypes cover (batch indices 0..31 among them)
CLUSTER_N = 61  # the set clustered from unequal shares: 40 images on rank 0, 21 on rank 1
VARIANTS = ("synced", "no_gather", "local_bn")
SMALL = dict(queue_size=96, dim=32, batch_size=BATCH, cluster_sizes=(12, 4), kmeans_iters=5)


class _FixedViews(nn.Module):
    """Deterministic views, identical in every run: the images and their dimmed mirror image
    (``view`` for the loop's multi-crop hook, unused here)."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, 0.9 * x.flip(-1) + 0.05

    def view(self, x: torch.Tensor) -> torch.Tensor:
        return x


class _Step(nn.Module):
    """What Lightning's DDP wraps: ``forward(batch)`` runs the task's ``training_step``."""

    def __init__(self, task: nn.Module):
        super().__init__()
        self.task = task

    def forward(self, batch, batch_idx: int):
        return self.task.training_step(batch, batch_idx)["loss"]


def _fixed_prototypes() -> ClusterResult:
    g = torch.Generator().manual_seed(7)
    return hierarchical_kmeans(torch.randn(PROTO_N, SMALL["dim"], generator=g), (12, 4), seed=1)


def _task(gather: bool = True, **kwargs) -> HCSCTask:
    torch.manual_seed(0)
    return HCSCTask(
        in_channels=1, augment=_FixedViews(), gather_distributed=gather, **{**SMALL, **kwargs}
    )


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    d = load_digits(size=16)
    return d.images[:BATCH], d.labels[:BATCH], torch.arange(BATCH)


def _state(task: HCSCTask) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in task.model.state_dict().items()}


def _steps(task: HCSCTask, step: nn.Module, batch, n: int = 2) -> None:
    """``n`` optimisation steps on the same batch: the second one contrasts against the queue that
    the first one filled."""
    opt = task.configure_optimizers()["optimizer"]
    for i in range(n):
        opt.zero_grad(set_to_none=True)
        step(batch, i).backward()
        opt.step()


def _cluster_loader(indices: list[int]) -> DataLoader:
    ds = IndexedDataset(load_digits(size=16).subset(torch.arange(CLUSTER_N)))
    return DataLoader(Subset(ds, indices), batch_size=16)


def _clusters_dict(c: ClusterResult) -> dict:
    return {f.name: getattr(c, f.name) for f in dataclasses.fields(c)}


def _ddp_worker(rank: int) -> dict:
    torch.set_num_threads(1)
    part = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
    x, y, idx = _batch()
    out = {}
    for variant in VARIANTS:
        task = _task(gather=variant != "no_gather")
        if variant != "local_bn":
            convert_global_batchnorm(task.model)  # query AND key encoder
        task.clusters = _fixed_prototypes()
        _steps(task, DistributedDataParallel(_Step(task)), (x[part], y[part], idx[part]))
        out[variant] = _state(task)
    share = list(range(40)) if rank == 0 else list(range(40, CLUSTER_N))
    clusters = _task().compute_clusters(_cluster_loader(share))
    out["clusters"] = _clusters_dict(clusters)
    return out


@pytest.fixture(scope="module")
def ranks() -> list[dict]:
    return run_gloo(_ddp_worker, WORLD)


def _lightning_ddp_worker(rank: int) -> dict:
    """One step (a MoCo warm-up epoch) under ``Trainer(strategy="ddp", devices=2)``: Lightning
    joins the process group ``run_gloo`` made as an externally launched job; BN synchronised by the
    engine's ``GlobalBatchNormSync``; this rank's half of the fixed batch."""
    from torch.utils.data import TensorDataset

    from plugins.distributed import revert_global_batchnorm

    torch.set_num_threads(1)
    part = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
    x, y, idx = _batch()
    task = _task(warmup_epochs=5)
    trainer = lightning_ddp_trainer(rank, WORLD)
    loader = DataLoader(TensorDataset(x[part], y[part], idx[part]), batch_size=BATCH // WORLD)
    trainer.fit(task, loader)
    assert trainer.global_step == 1 and trainer.world_size == WORLD
    revert_global_batchnorm(task)
    return _state(task)


@pytest.mark.distributed
def test_lightning_ddp_strategy_step_equals_single_process_step():
    """Both encoders, BN statistics and the queue (every rank's keys, in rank order) after one
    step under Lightning's ddp strategy equal one process's step on the whole batch."""
    ranks = run_gloo(_lightning_ddp_worker, WORLD)
    task = _task(warmup_epochs=5)
    _steps(task, _Step(task), _batch(), n=1)
    ref = _state(task)
    assert int(ref["queue.filled"]) == BATCH
    for r in ranks:
        assert _max_diff(r, ref) < 1e-5
        assert torch.equal(r["queue.tags"], ref["queue.tags"])


@pytest.mark.distributed
def test_ddp_steps_equal_single_process_steps(ranks):
    task = _task()
    start = _state(task)
    task.clusters = _fixed_prototypes()
    _steps(task, _Step(task), _batch())
    ref = _state(task)
    assert _max_diff(ref, start) > 1e-4  # the steps moved the parameters and filled the queue
    assert int(ref["queue.ptr"]) == 2 * BATCH and int(ref["queue.filled"]) == 2 * BATCH
    assert torch.equal(ref["queue.tags"][: 2 * BATCH], torch.arange(BATCH).repeat(2))
    both_encoders = [k for k in ref if k.startswith(("online.", "target."))]
    assert any("running_mean" in k for k in both_encoders)  # BN buffers are compared
    for r in ranks:  # query + key encoders, BN statistics and the queue of one process
        assert _max_diff(r["synced"], ref) < 1e-5
        assert torch.equal(r["synced"]["queue.tags"], ref["queue.tags"])
    # the check has teeth: a queue of this rank's keys only, or per-rank BN, gives another state
    assert _max_diff(ranks[0]["no_gather"], ref, ["queue.features"]) > 1e-4
    assert _max_diff(ranks[0]["no_gather"], ref) > 1e-4
    assert _max_diff(ranks[0]["local_bn"], ref, both_encoders) > 1e-4


@pytest.mark.distributed
def test_prototypes_from_gathered_features_equal_whole_set_kmeans(ranks):
    a, b = ranks[0]["clusters"], ranks[1]["clusters"]
    for name in ("im2cluster", "centroids", "density", "parents"):
        assert all(torch.equal(u, v) for u, v in zip(a[name], b[name])), name
    whole = _task().compute_clusters(_cluster_loader(list(range(CLUSTER_N))))
    assert [len(t) for t in a["im2cluster"]] == [CLUSTER_N, CLUSTER_N]
    for level in range(2):
        assert torch.equal(a["im2cluster"][level], whole.im2cluster[level])
        torch.testing.assert_close(a["centroids"][level], whole.centroids[level], atol=1e-5, rtol=0)
        torch.testing.assert_close(a["density"][level], whole.density[level], atol=1e-5, rtol=0)
    assert torch.equal(a["parents"][0], whole.parents[0])


# -- Lightning runs -------------------------------------------------------------------------------
def _loader(n: int = 64, batch_size: int = 32) -> DataLoader:
    ds = load_digits(size=16).subset(torch.arange(n))
    return DataLoader(IndexedDataset(ds), batch_size=batch_size, shuffle=True)


def _trainer(tmp_path, **kwargs) -> Trainer:
    return cpu_trainer(tmp_path, **kwargs)


def _new_task(**kwargs) -> HCSCTask:
    torch.manual_seed(0)
    return HCSCTask(in_channels=1, warmup_epochs=0, **{**SMALL, "cluster_sizes": (8, 4), **kwargs})


class _LossDtype(Callback):
    def __init__(self):
        self.dtypes: list[torch.dtype] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.dtypes.append(outputs["loss"].dtype)


def test_bf16_mixed_trains_and_losses_stay_float32(tmp_path, monkeypatch):
    seen = []
    for name in ("selective_info_nce_levels", "prototype_nce"):
        fn = getattr(hcsc_model, name)

        def spy(q, *args, _fn=fn, _name=name, **kwargs):
            loss = _fn(q, *args, **kwargs)
            seen.append((_name, q.dtype, loss.dtype, torch.is_autocast_enabled("cpu")))
            return loss

        monkeypatch.setattr(hcsc_model, name, spy)
    task, dtypes = _new_task(), _LossDtype()
    before = _state(task)
    trainer = _trainer(tmp_path, precision="bf16-mixed", max_steps=2, callbacks=[dtypes])
    trainer.fit(task, _loader())
    assert trainer.global_step == 2
    assert task.clusters is not None  # clustered epoch: instance + prototype terms ran
    assert {s[0] for s in seen} == {"selective_info_nce_levels", "prototype_nce"}
    # autocast was on and the heads ran in bf16, yet every loss was computed in float32
    assert all(q == torch.bfloat16 and autocast for _, q, _, autocast in seen)
    assert all(loss == torch.float32 for _, _, loss, _ in seen)
    assert dtypes.dtypes == [torch.float32, torch.float32]
    assert task.model.queue.features.dtype == torch.float32
    assert torch.isfinite(trainer.callback_metrics["train_loss"])
    after = _state(task)
    assert all(after[k].dtype == before[k].dtype for k in before)  # master weights stay float32
    assert _max_diff(after, before) > 0


@pytest.mark.parametrize("probe", [True, False], ids=["probe", "training-batch"])
def test_fast_dev_run_with_collapse_monitor(tmp_path, probe):
    d = load_digits(size=16)
    monitor = CollapseMonitor(
        every_n_steps=1,
        on="representation",
        probe_batch=d.images[-64:] if probe else None,
        run_dir=tmp_path / "collapse",
        plot=probe,
    )
    task = _new_task()
    trainer = _trainer(tmp_path, fast_dev_run=1, callbacks=[monitor])
    trainer.fit(task, _loader())
    assert trainer.global_step == 1
    assert [h["step"] for h in monitor.tracker.history] == [1.0]
    stats = monitor.tracker.history[0]
    assert stats["dim"] == task.model.encoder.out_dim
    assert 1.0 <= stats["effective_rank"] <= stats["dim"]
    logged = trainer.callback_metrics
    assert "collapse/representation/effective_rank" in logged
    for key in ("train_loss", "train_loss_ins", "train_loss_proto", "train_kept", "cluster_nmi"):
        assert key in logged, key
    if probe:
        assert (tmp_path / "collapse" / "collapse_spectrum_representation.png").is_file()


def test_collapse_features_hook_and_missing_index():
    task = _new_task().eval()
    x = (load_digits(size=16).images[:8] * 255).to(torch.uint8)  # uint8 batches are accepted
    with torch.no_grad():
        r = task.collapse_features((x, None))
        z = task.collapse_features({"image": x}, on="embedding")
    assert r.shape == (8, task.model.encoder.out_dim) and z.shape == (8, SMALL["dim"])
    with pytest.raises(UserInputError, match="dataset index"):
        task.training_step((x.float() / 255, torch.zeros(8)), 0)


def test_checkpoint_keeps_the_epoch_prototypes(tmp_path):
    task = _new_task()
    trainer = _trainer(tmp_path, max_steps=1)
    trainer.fit(task, _loader())
    trainer.save_checkpoint(tmp_path / "hcsc.ckpt")
    state = load_checkpoint(tmp_path / "hcsc.ckpt")  # weights_only: plain tensors and lists
    fresh = _new_task()
    fresh.on_load_checkpoint(state)
    assert fresh.clusters_epoch == 0
    for a, b in zip(fresh.clusters.centroids, task.clusters.centroids):
        assert torch.equal(a, b)
    assert torch.equal(fresh.clusters.im2cluster[1], task.clusters.im2cluster[1])


# -- paper-faithful: the Lightning task equals the hand-written loop ------------------------------
class _EpochPermutation(torch.utils.data.Sampler):
    """``train_hcsc``'s order: epoch e's ``randperm`` from ``Generator().manual_seed(seed)``
    (Lightning calls :meth:`set_epoch`)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed)
        for _ in range(self.epoch + 1):
            perm = torch.randperm(self.n, generator=g)
        return iter(perm.tolist())

    def __len__(self) -> int:
        return self.n


class _Losses(Callback):
    def __init__(self):
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


@pytest.mark.parametrize("selection", [False, True], ids=["no-selection", "selection"])
def test_task_under_trainer_equals_train_hcsc(tmp_path, monkeypatch, selection):
    """One warm-up epoch (MoCo v2) and one clustered epoch, 3 steps each, same seed, data, batches
    and views. Without selection everything is deterministic and the two are bit-identical. With
    selection the Bernoulli masks differ by construction: the loop draws them from the global RNG,
    the task from a generator seeded by (seed, batch number) so that DDP ranks and resumed runs draw
    the masks of one uninterrupted process. Then the warm-up losses and the first clustered epoch's
    prototypes (k-means of the key features after the warm-up) must still be identical."""
    n, bs, epochs, seed = 96, 32, 2, 3
    ds = load_digits(size=16).subset(torch.arange(n))
    cfg = HCSCConfig(
        **{**SMALL, "cluster_sizes": (24, 6)},
        epochs=epochs,
        warmup_epochs=1,
        kmeans_restarts=1,
        instance_selection=selection,
        prototype_selection=selection,
    )
    monkeypatch.setattr(hcsc_train, "TwoViewAugment", _FixedViews)
    model, hist = train_hcsc(ds, cfg, device="cpu", seed=seed, progress=False)

    torch.manual_seed(seed)
    keys = [f.name for f in dataclasses.fields(HCSCConfig) if f.name not in ("epochs",)]
    task = HCSCTask(
        in_channels=1, seed=seed, augment=_FixedViews(), **{k: getattr(cfg, k) for k in keys}
    )
    loader = DataLoader(
        IndexedDataset(ds), batch_size=bs, sampler=_EpochPermutation(n, seed), drop_last=True
    )
    losses = _Losses()
    _trainer(tmp_path, max_epochs=epochs, callbacks=[losses]).fit(task, loader)

    steps = n // bs
    assert losses.losses[:steps] == hist.losses[:steps]  # warm-up epoch: plain MoCo v2
    for a, b in zip(task.clusters.centroids, hist.clusters.centroids):
        assert torch.equal(a, b)
    for a, b in zip(task.clusters.im2cluster, hist.clusters.im2cluster):
        assert torch.equal(a, b)
    assert task.cluster_log[0]["nmi"] == pytest.approx(hist.nmi[0])
    loop, ours = model.state_dict(), task.model.state_dict()
    if not selection:
        assert losses.losses == hist.losses
        assert all(torch.equal(loop[k], ours[k]) for k in loop)  # both encoders, BN, queue
    else:
        assert losses.losses[steps:] != hist.losses[steps:]  # other masks ...
        assert torch.equal(loop["queue.tags"], ours["queue.tags"])  # ... same batches


def test_resume_at_an_epoch_boundary_equals_one_run(tmp_path):
    """2 epochs in one go equal 1 epoch, a checkpoint and a resumed second (clustered, selective)
    epoch: the queue travels in the state dict, the prototypes are recomputed from the restored key
    encoder, and the selection masks come from (seed, batch number), not from the global RNG."""
    n, bs, seed = 64, 32, 5

    class Stop(Callback):  # an interruption after the first epoch of a 2-epoch run
        def on_train_epoch_end(self, trainer, pl_module):
            trainer.should_stop = True

    def fit(stop: bool, ckpt_path=None) -> HCSCTask:
        torch.manual_seed(seed)
        task = HCSCTask(
            in_channels=1, seed=seed, augment=_FixedViews(), **{**SMALL, "cluster_sizes": (8, 4)}
        )
        task.hparams.warmup_epochs = 1
        loader = DataLoader(
            IndexedDataset(load_digits(size=16).subset(torch.arange(n))),
            batch_size=bs,
            sampler=_EpochPermutation(n, seed),
            drop_last=True,
        )
        trainer = _trainer(tmp_path, max_epochs=2, callbacks=[Stop()] if stop else [])
        torch.manual_seed(seed + 1)  # a different global RNG state at each start
        trainer.fit(task, loader, ckpt_path=ckpt_path)
        if stop:
            assert trainer.current_epoch == 1
            trainer.save_checkpoint(tmp_path / "stopped.ckpt")
        return task

    whole = fit(False)
    fit(True)
    resumed = fit(False, ckpt_path=tmp_path / "stopped.ckpt")
    assert resumed.clusters_epoch == whole.clusters_epoch == 1
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(
        torch.equal(u, v) for u, v in zip(whole.clusters.centroids, resumed.clusters.centroids)
    )


def test_engine_resume_after_an_epochs_last_batch_clusters_the_next_epoch(tmp_path):
    """A checkpoint written after the warm-up epoch's last batch: Lightning resumes that epoch's
    number without calling on_train_epoch_start, so the next (clustered) epoch's prototypes come
    from on_train_batch_start, and clustering there must leave the global RNG (the views) alone.
    The resumed engine run then equals the uninterrupted one: parameters, queue, prototypes,
    losses and the selection diagnostics."""
    import plugins.engine as engine
    from plugins.data import ImageTensorDataset
    from plugins.methods.hcsc.run import fit_hcsc
    from plugins.reporting import RunContext, RunDir

    d = load_digits()
    train = ImageTensorDataset(d.images[:96], d.labels[:96], d.classes)
    cfg = HCSCConfig(epochs=2, batch_size=16, warmup_epochs=1, queue_size=32, dim=16,
                     cluster_sizes=(6, 3), kmeans_iters=5, kmeans_restarts=1, optimizer="adam")  # fmt: skip
    per_epoch = 96 // 16

    class Stop(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == per_epoch:
                raise KeyboardInterrupt

    def ctx(name: str, **kwargs) -> RunContext:
        return RunContext("hcsc", RunDir(path=tmp_path / name), device=torch.device("cpu"),
                          progress=False, **{"checkpoint_every": (None, None), **kwargs})  # fmt: skip

    whole, hist = fit_hcsc(ctx("whole"), train, cfg)
    fit = engine.fit
    try:
        engine.fit = lambda *a, callbacks=(), **k: fit(*a, callbacks=[*callbacks, Stop()], **k)
        with pytest.raises(KeyboardInterrupt):
            fit_hcsc(ctx("cut", checkpoint_every=(1, None)), train, cfg)
    finally:
        engine.fit = fit
    assert load_checkpoint(tmp_path / "cut" / "last.ckpt", "hcsc")["global_step"] == per_epoch
    resumed, rhist = fit_hcsc(
        ctx("resumed", resume=str(tmp_path / "cut" / "last.ckpt")), train, cfg
    )
    a, b = whole.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # both encoders, heads and the key queue
    for u, v in zip(hist.clusters.centroids, rhist.clusters.centroids, strict=True):
        assert torch.equal(u, v)
    assert rhist.losses == hist.losses and len(hist.losses) == 2 * per_epoch
    assert rhist.nmi == hist.nmi and len(hist.nmi) == 1
    assert rhist.fn_removed == hist.fn_removed and rhist.tn_removed == hist.tn_removed
    assert len(hist.fn_removed) == 1


def _diagnostics_worker(rank: int) -> tuple[list[float], list[float]]:
    """One epoch of one batch per rank through SelectionDiagnostics, with the strategy's reduce
    over the gloo group; rank r sees its own queries and queue."""
    from types import SimpleNamespace

    import torch.distributed as dist

    from plugins.methods.hcsc.task import SelectionDiagnostics

    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    diag = SelectionDiagnostics(labels)

    def reduce(t, reduce_op="sum"):
        dist.all_reduce(t)
        return t

    trainer = SimpleNamespace(num_training_batches=1, strategy=SimpleNamespace(reduce=reduce))
    # rank 0: query image 0 against a queue of images 1 (same class), 2, 4; it removes image 1 only
    # rank 1: query image 2 against images 3 (same class), 4, 5 and removes nothing
    queue = torch.tensor([[1, 2, 4], [3, 4, 5]])[rank]
    keep = torch.tensor([[[False, True, True]], [[True, True, True]]])[rank][None]
    outputs = {"keep": keep, "queue_tags": queue, "index": torch.tensor([2 * rank])}
    diag.on_train_batch_end(trainer, SimpleNamespace(device=torch.device("cpu")), outputs, None, 0)
    return diag.fn_removed, diag.tn_removed


@pytest.mark.distributed
def test_selection_diagnostics_under_ddp_count_every_ranks_queries():
    """Rank 0 removes its one false negative, rank 1 keeps its one: the epoch's fraction is 1/2 on
    both ranks (not rank 0's 1/1), and no true negative was removed (0/4)."""
    results = run_gloo(_diagnostics_worker, 2)
    assert results == [([0.5], [0.0]), ([0.5], [0.0])]
