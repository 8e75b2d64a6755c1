"""HCSC as a Lightning task (Guo et al., "HCSC: Hierarchical Contrastive Selective Coding", CVPR 2022,
on MoCo v2, Chen et al. 2020); the maths stays in :class:`HCSC`, :mod:`~plugins.methods.hcsc.loss`
and :func:`hierarchical_kmeans`, the epoch's recipe is :func:`plugins.methods.hcsc.train.train_hcsc`'s.

::

    ds = IndexedDataset(load_digits(size=16))          # batches (images, labels, dataset index)
    task = HCSCTask(in_channels=1, cluster_sizes=(60, 30, 15), warmup_epochs=1, queue_size=512)
    Trainer(strategy="ddp", devices=2, sync_batchnorm=True).fit(task, DataLoader(ds, 64, shuffle=True))

**Batches** carry the dataset index of every image (HCSC looks up each sample's prototypes and tags
the queue with it): a tuple ``(images, labels, index)`` or a dict with an ``"index"`` key.
:class:`IndexedDataset` adds it to any map-style data set.

**Clustering** (Algorithm 1): at the start of every epoch from ``warmup_epochs`` on (never with
``clustering=False``, which is plain MoCo v2), :meth:`on_train_epoch_start` computes
the key encoder's features of the whole training set (:func:`key_features`, eval mode, un-augmented
images) from :meth:`cluster_dataloader`: the datamodule's ``cluster_dataloader()`` when it has one,
else the trainer's training set, in order, each rank reading its share (:class:`EpochSampler`
without shuffling). The features of every rank are gathered (unequal counts padded) and put in
dataset-index order; rank 0 runs the hierarchical k-means (seed ``seed + epoch``, as the loop) and
broadcasts the prototypes, so every rank holds bit-identical prototypes even where k-means is not
deterministic (``index_add_`` on CUDA).

**DDP** (the test in ``tests/plugins/test_hcsc_task.py`` checks each point against one process on
the whole batch):

* the MoCo queue enqueues the keys of all ranks in rank order (:class:`FeatureQueue` gathers), so
  every rank's queue is the single-process queue and the loss sees the same negatives;
* selection (eqs. 4-7) draws its Bernoulli masks for the gathered global batch from a generator
  seeded by ``(seed, batch number)`` (:meth:`batch_number`) on every rank and keeps this rank's rows: the masks of a
  single process on the whole batch, and the same again after a resume;
* BatchNorm: SyncBN semantics for both encoders, not MoCo v2's shuffle-BN. ``Trainer(sync_batchnorm=
  True)`` converts the whole task, so the key encoder too (on CPU / gloo, where ``SyncBatchNorm``
  refuses CPU tensors, :func:`plugins.distributed.convert_global_batchnorm` does the same). Both
  remove the per-device BN statistics that shuffle-BN was invented against (He et al., MoCo, Sec.
  3.3), but SyncBN makes a DDP step equal the single-process step on the whole batch, which is what
  the paper-faithful loop :func:`train_hcsc` (one process, plain BN) computes; shuffle-BN would make
  the result depend on the per-device batch (MoCo v3 and SimCLR use global BN for the same reason).

``gather_distributed=False`` (only to study the effect) gives every rank its own queue of its own
keys and its own masks. Checkpoints keep the epoch's prototypes and the queue-to-prototype cache, so
a run resumed in the middle of an epoch goes on with the same prototypes.
:class:`plugins.monitoring.CollapseMonitor` finds its features through :meth:`collapse_features`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightning.pytorch import Callback
from torch import nn
from torch.utils.data import DataLoader

from plugins import distributed as D
from plugins.backbones import small_resnet
from plugins.data import TwoViewAugment
from plugins.data.stream import EpochSampler, IndexedDataset, split_batch
from plugins.errors import UserInputError
from plugins.heads import FeatureQueue
from plugins.methods.hcsc.config import HCSCConfig
from plugins.methods.hcsc.kmeans import ClusterResult, hierarchical_kmeans
from plugins.methods.hcsc.model import HCSC
from plugins.methods.hcsc.train import key_features, selection_stats
from plugins.tasks import ContrastiveImageTask

__all__ = ["HCSCTask", "IndexedDataset", "SelectionDiagnostics", "split_indexed_batch"]

_DEFAULTS = HCSCConfig()


# -- data -----------------------------------------------------------------------------------------
def split_indexed_batch(
    batch: Any,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``(images, labels or None, dataset index or None)`` of a batch: a dict (``"index"`` key) or a
    tuple ``(images, labels, index)``; other layouts as :func:`split_batch`, without an index."""
    images, labels = split_batch(batch)
    index = None
    if isinstance(batch, Mapping):
        index = batch.get("index")
    elif isinstance(batch, (tuple, list)) and len(batch) > 2:
        index = batch[2]
    if index is not None:
        index = torch.as_tensor(index, dtype=torch.long)
    return images, labels, index


# -- distributed helpers --------------------------------------------------------------------------
@torch.no_grad()
def _gather_rows(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Every rank's rows of ``x`` (n_r, ...) in rank order, for unequal n_r (padded for the
    all-gather, the padding dropped), and the offset of this rank's rows in the result."""
    if not D.is_distributed():
        return x, 0
    counts = D.gather_no_grad(torch.tensor([x.shape[0]], device=x.device)).tolist()
    most = max(counts)
    pad = x.new_zeros((most - x.shape[0], *x.shape[1:]))
    every = D.gather_no_grad(torch.cat([x, pad]))
    rows = [every[r * most : r * most + c] for r, c in enumerate(counts)]
    return torch.cat(rows), sum(counts[: D.rank()])


@torch.no_grad()
def _broadcast_clusters(
    clusters: ClusterResult | None, n: int, sizes: list[int], dim: int, device: torch.device
) -> ClusterResult:
    """Rank 0's prototypes on every rank (the shapes follow from ``n``, ``sizes`` and ``dim``)."""
    if not D.is_distributed():
        assert clusters is not None
        return clusters
    levels = len(sizes)
    if D.rank() == 0:
        assert clusters is not None
        im2cluster = [t.to(device) for t in clusters.im2cluster]
        centroids = [t.to(device, torch.float32) for t in clusters.centroids]
        density = [t.to(device, torch.float32) for t in clusters.density]
        parents = [t.to(device) for t in clusters.parents]
        objective = torch.tensor(clusters.objective, dtype=torch.float64, device=device)
    else:
        im2cluster = [torch.empty(n, dtype=torch.long, device=device) for _ in sizes]
        centroids = [torch.empty(k, dim, device=device) for k in sizes]
        density = [torch.empty(k, device=device) for k in sizes]
        parents = [torch.empty(k, dtype=torch.long, device=device) for k in sizes[:-1]]
        objective = torch.empty(levels, dtype=torch.float64, device=device)
    for t in [*im2cluster, *centroids, *density, *parents, objective]:
        dist.broadcast(t, src=0)
    return ClusterResult(im2cluster, centroids, density, parents, objective.tolist())


def _seed_of(*values: int) -> int:
    """A 63-bit seed that is a function of ``values`` only (numpy's SeedSequence)."""
    return int(
        np.random.SeedSequence([int(v) for v in values]).generate_state(2, np.uint64)[0] >> 1
    )


# -- model ----------------------------------------------------------------------------------------
class _RankLocalQueue(FeatureQueue):
    """A queue that takes only this rank's keys (``gather_distributed=False``, to study the effect):
    the FIFO of :class:`FeatureQueue` without its all-gather."""

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor, tags: torch.Tensor | None = None) -> torch.Tensor:
        if not D.is_distributed():
            return super().enqueue(keys, tags)
        keys = keys.detach()
        if tags is None:
            tags = torch.full((keys.shape[0],), -1, dtype=torch.long, device=keys.device)
        n = keys.shape[0]
        if n > self.size:
            keys, tags, n = keys[-self.size :], tags[-self.size :], self.size
        slots = (self.ptr + torch.arange(n, device=keys.device)) % self.size
        self.features[slots] = F.normalize(keys.to(self.features.dtype), dim=1)
        self.tags[slots] = tags.to(self.tags.device)
        self.ptr.copy_((self.ptr + n) % self.size)
        self.filled.copy_(torch.clamp(self.filled + n, max=self.size))
        return slots


class _TaskHCSC(HCSC):
    """:class:`HCSC` whose selection masks are drawn for the global batch.

    Before each step the task sets :attr:`selection_seed`; the masks are then drawn from a generator
    with that seed for the batch gathered from every rank (its dataset indices), and each rank keeps
    its own rows, as one process on the whole batch would draw them. Under DDP the prototype masks
    also leave out the prototypes that are the positive of a query on another rank, so that eq. 7's
    negatives are those of the global batch, as in one process (with ``reference_semantics`` the
    authors' per-GPU exclusion stays: their code builds the negative set from each GPU's batch).
    """

    def __init__(self, encoder: nn.Module, feat_dim: int, config: HCSCConfig, gather: bool):
        super().__init__(encoder, feat_dim, config)
        self.gather_masks = gather
        self.selection_seed: int | None = None
        if not gather:  # same initial keys, no all-gather
            local = _RankLocalQueue(config.queue_size, config.dim)
            local.load_state_dict(self.queue.state_dict())
            self.queue = local

    def _sample_masks(
        self, clusters: ClusterResult, index: torch.Tensor
    ) -> tuple[list[torch.Tensor | None], list[torch.Tensor | None]]:
        if self.selection_seed is not None:
            self._generator = torch.Generator(device=index.device).manual_seed(self.selection_seed)
        if not (self.gather_masks and D.is_distributed()):
            return super()._sample_masks(clusters, index)
        every, start = _gather_rows(index)
        inst, proto = super()._sample_masks(clusters, every)
        rows = slice(start, start + index.shape[0])
        inst = [m if m is None else m[rows] for m in inst]
        proto = [m if m is None else m[rows] for m in proto]
        cfg = self.config
        if cfg.prototype_loss and not cfg.reference_semantics:
            # eq. 7's negatives are the prototypes that no query of the batch has as its positive:
            # of the GLOBAL batch (prototype_nce sees this rank's positives only), folded into keep
            for level in range(clusters.num_levels):
                ids = clusters.im2cluster[level].to(index.device)[every]
                free = torch.ones(
                    clusters.centroids[level].shape[0], dtype=torch.bool, device=index.device
                )
                free[ids] = False
                mask = free[None].expand(index.shape[0], -1)
                proto[level] = mask if proto[level] is None else proto[level] & mask
        return inst, proto


# -- task -----------------------------------------------------------------------------------------
class HCSCTask(ContrastiveImageTask):
    """HCSC (Guo et al., CVPR 2022) on MoCo v2 for ``lightning.Trainer``.

    Args:
        in_channels: image bands.
        arch: encoder, ``"tiny"`` or a torchvision ResNet name (:func:`plugins.backbones.small_resnet`).
        dim, queue_size, momentum, temperature, lr, sgd_momentum, weight_decay, batch_size,
            warmup_epochs, cluster_sizes, kmeans_iters, kmeans_restarts, instance_selection,
            prototype_selection, prototype_loss, reference_semantics, cache_queue_probs, multi_crop,
            local_crop_sizes, optimizer, crop_scale, image_size: the :class:`HCSCConfig` fields of
            the same names (defaults there). ``batch_size`` is the global batch the SGD learning
            rate is scaled with (``lr * batch_size / 256``); the epochs are the trainer's.
        clustering: False trains plain MoCo v2 (no prototypes), as ``train_hcsc(clustering=False)``.
        seed: k-means seed (``seed + epoch``) and selection-mask seed (with :meth:`batch_number`).
        cluster_batch_size: batch size of the default :meth:`cluster_dataloader` (as
            :func:`key_features`).
        augment: module ``images -> (query view, key view)``; default ``TwoViewAugment(image_size or
            the input side, scale=crop_scale)``, run on the batch's device.
        gather_distributed: under DDP the queue takes every rank's keys and selection draws its
            masks for the global batch (MoCo / HCSC). Off only to study its effect.
    """

    config_class = HCSCConfig

    def __init__(
        self,
        in_channels: int = 3,
        arch: str = _DEFAULTS.arch,
        dim: int = _DEFAULTS.dim,
        queue_size: int = _DEFAULTS.queue_size,
        momentum: float = _DEFAULTS.momentum,
        temperature: float = _DEFAULTS.temperature,
        lr: float = _DEFAULTS.lr,
        sgd_momentum: float = _DEFAULTS.sgd_momentum,
        weight_decay: float = _DEFAULTS.weight_decay,
        batch_size: int = _DEFAULTS.batch_size,
        warmup_epochs: int = _DEFAULTS.warmup_epochs,
        cluster_sizes: tuple[int, ...] = _DEFAULTS.cluster_sizes,
        kmeans_iters: int = _DEFAULTS.kmeans_iters,
        kmeans_restarts: int = _DEFAULTS.kmeans_restarts,
        instance_selection: bool = _DEFAULTS.instance_selection,
        prototype_selection: bool = _DEFAULTS.prototype_selection,
        prototype_loss: bool = _DEFAULTS.prototype_loss,
        reference_semantics: bool = _DEFAULTS.reference_semantics,
        cache_queue_probs: bool = _DEFAULTS.cache_queue_probs,
        multi_crop: bool = _DEFAULTS.multi_crop,
        local_crop_sizes: tuple[int, ...] = _DEFAULTS.local_crop_sizes,
        optimizer: str = _DEFAULTS.optimizer,
        crop_scale: tuple[float, float] = _DEFAULTS.crop_scale,
        image_size: int | None = _DEFAULTS.image_size,
        clustering: bool = True,
        seed: int = 0,
        cluster_batch_size: int = 512,
        augment: nn.Module | None = None,
        gather_distributed: bool = True,
    ):
        super().__init__(augment)
        if optimizer not in ("sgd", "adam"):
            raise UserInputError(f"optimizer must be 'sgd' or 'adam', got '{optimizer}'.")
        self.save_hyperparameters(ignore=["augment"])
        self.clusters: ClusterResult | None = None
        self.clusters_epoch = -1  # the epoch self.clusters were computed for
        self.cluster_log: list[dict[str, float]] = []  # per clustering: epoch, seconds, nmi
        self._restored_queue_probs: list[torch.Tensor] | None = None
        self._restored = False  # prototypes came with a checkpoint: move them, set the cache
        self.configure_models()

    def configure_models(self) -> None:
        """Encoder (:func:`small_resnet`) in :class:`HCSC` (query + key encoders, queue). The
        queue-probability cache assumes gathered keys, so it is off with ``gather_distributed=False``."""
        h = self.hparams
        encoder, feat_dim = small_resnet(h.in_channels, h.arch)
        config = dataclasses.replace(
            self.config, cache_queue_probs=h.cache_queue_probs and h.gather_distributed
        )
        self.model = _TaskHCSC(encoder, feat_dim, config, gather=h.gather_distributed)

    def make_augment(self, size: int) -> nn.Module:
        return TwoViewAugment(size, scale=tuple(self.hparams.crop_scale))

    def local_crops(self, x: torch.Tensor) -> list[torch.Tensor]:
        """HCSC's multi-crop small views (``multi_crop``; sides ``local_crop_sizes`` relative to
        224-pixel global crops), as :func:`train_hcsc` draws them; empty otherwise."""
        if not self.hparams.multi_crop:
            return []
        size = self.hparams.image_size or x.shape[-1]
        scale = tuple(self.hparams.crop_scale)
        return [
            TwoViewAugment(max(4, round(size * s / 224)), scale=scale).view(x)
            for s in self.hparams.local_crop_sizes
        ]

    def training_epoch(self) -> int:
        """The epoch being trained: under a trainer, from its optimisation steps
        (:func:`plugins.engine.position`), which stay right when a run resumes from a checkpoint
        written after the last batch of an epoch (Lightning then restarts that epoch's number);
        ``current_epoch`` otherwise."""
        trainer = self._trainer
        if trainer is None:
            return self.current_epoch
        from plugins.engine import position

        return position(trainer)[0]

    def clustered_epoch(self, epoch: int) -> bool:
        """True when ``epoch`` trains with prototypes (``clustering`` and past the warm-up)."""
        return bool(self.hparams.clustering) and epoch >= self.hparams.warmup_epochs

    # -- clustering -------------------------------------------------------------------------------
    def cluster_dataloader(self) -> Iterable:
        """Batches of the whole training set for the epoch's clustering, this rank's share.

        The datamodule's ``cluster_dataloader()`` when it defines one (each rank a share; batches
        may carry the dataset index as :func:`split_indexed_batch` reads it, else the loader's
        sampler order is taken as the index). Otherwise the trainer's training set, unshuffled, split
        across ranks by :class:`EpochSampler` (padded by wrapping around), ``cluster_batch_size``
        images per batch, with the training loader's workers and collate function.
        """
        trainer = self.trainer
        dm = getattr(trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "cluster_dataloader"):
            return dm.cluster_dataloader()
        train = trainer.train_dataloader
        if not isinstance(train, DataLoader):
            raise UserInputError(
                "HCSCTask clusters the training set at each epoch: give the trainer one DataLoader, "
                f"or a datamodule with cluster_dataloader(); got {type(train).__name__}."
            )
        ds = train.dataset
        sampler = EpochSampler(len(ds), shuffle=False, num_replicas=D.world_size(), rank=D.rank())
        return type(train)(
            ds,
            batch_size=self.hparams.cluster_batch_size,
            sampler=sampler,
            num_workers=train.num_workers,
            collate_fn=train.collate_fn,
        )

    @torch.no_grad()
    def compute_clusters(
        self, loader: Iterable, epoch: int = 0, num_samples: int | None = None
    ) -> ClusterResult:
        """The hierarchical prototypes (HCSC Sec. 3.2) of the key features of the whole training set.

        Each rank computes :func:`key_features` of the batches of ``loader`` (its share); the
        features of every rank are gathered and ordered by dataset index; rank 0 runs
        :func:`hierarchical_kmeans` (seed ``seed + epoch``) and broadcasts the result, so that every
        rank returns the same prototypes. Every index ``0..num_samples - 1`` must be seen (default:
        ``len(loader.dataset)``, or the largest index + 1 when that is larger, e.g. for a share
        given as a ``Subset``).
        """
        h = self.hparams
        t0 = time.perf_counter()
        feats, labels, index = [], [], []
        for batch in loader:
            x, y, idx = split_indexed_batch(batch)
            x = self.prepare(x.to(self.device))
            feats.append(key_features(self.model, x, batch_size=max(1, len(x))))
            labels.append(y.reshape(-1).long() if y is not None else torch.full((len(x),), -1))
            index.append(idx.reshape(-1) if idx is not None else torch.full((len(x),), -1))
        dim = self.model.config.dim
        feats_local = torch.cat(feats) if feats else torch.empty(0, dim, device=self.device)
        index_local = torch.cat(index) if index else torch.empty(0, dtype=torch.long)
        labels_local = torch.cat(labels) if labels else torch.empty(0, dtype=torch.long)
        if (index_local < 0).any():  # batches without an index: the sampler's order is the index
            order = torch.as_tensor(list(getattr(loader, "sampler", [])), dtype=torch.long)
            if len(order) != len(index_local):
                raise UserInputError(
                    f"the cluster loader gave {len(index_local)} images but its sampler lists "
                    f"{len(order)} indices; let its batches carry the dataset index "
                    "(plugins.methods.hcsc.task.IndexedDataset)."
                )
            index_local = order
        every_feats, _ = _gather_rows(feats_local)
        every_index, _ = _gather_rows(index_local.to(self.device))
        every_labels, _ = _gather_rows(labels_local.to(self.device))
        if num_samples is None:  # the loader's data set, or its largest index (a share's Subset)
            dataset = getattr(loader, "dataset", None)
            top = int(every_index.max()) + 1 if len(every_index) else 0
            num_samples = max(len(dataset) if dataset is not None else 0, top)
        n = int(num_samples)
        seen = torch.zeros(n, dtype=torch.bool, device=self.device)
        seen[every_index] = True
        if not bool(seen.all()):
            raise UserInputError(
                f"the cluster loader covered {int(seen.sum())} of the {n} training images; "
                "HCSC clusters the whole training set, so every image must be in some rank's share."
            )
        full = every_feats.new_zeros(n, dim)
        full[every_index] = every_feats
        sizes = [int(s) for s in h.cluster_sizes]
        points = n
        for level, k in enumerate(sizes):  # checked on every rank: rank 0 must not fail alone
            if not 1 <= k <= points:
                raise UserInputError(
                    f"cluster_sizes {tuple(sizes)}: level {level} asks for {k} clusters of "
                    f"{points} points; use decreasing sizes below the {n} training images."
                )
            points = k
        clusters = None
        if D.rank() == 0:
            clusters = hierarchical_kmeans(
                full, sizes, h.kmeans_restarts, h.seed + epoch, h.kmeans_iters, h.temperature
            )
        clusters = _broadcast_clusters(clusters, n, sizes, dim, self.device)
        record = {"epoch": float(epoch), "seconds": time.perf_counter() - t0}
        label_of = torch.full((n,), -1, dtype=torch.long, device=self.device)
        label_of[every_index] = every_labels
        if bool((label_of >= 0).all()):  # a diagnostic only: the labels are never trained on
            from sklearn.metrics import normalized_mutual_info_score

            nmi = normalized_mutual_info_score(label_of.cpu(), clusters.im2cluster[0].cpu())
            record["nmi"] = float(nmi)
        self.cluster_log.append(record)
        return clusters

    def batch_number(self, batch_idx: int) -> int:
        """The training batch's number since the start of training (the trainer's batch progress,
        restored on resume, also in the middle of an epoch); ``batch_idx`` outside a trainer."""
        trainer = self._trainer
        if trainer is None:
            return batch_idx
        return int(trainer.fit_loop.epoch_loop.batch_progress.total.ready)

    # -- Lightning hooks --------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        """Cluster at the start of each clustered epoch (not again for an epoch resumed midway,
        whose prototypes came with the checkpoint); plain MoCo v2 epochs get no prototypes."""
        self.epoch_prototypes()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """As :meth:`on_train_epoch_start`, which Lightning skips for an epoch it resumes: a run
        resumed from a checkpoint written after an epoch's last batch gets the next epoch's
        prototypes here, and one resumed midway its restored prototypes on this device."""
        self.epoch_prototypes()

    def epoch_prototypes(self) -> None:
        """The prototypes of :meth:`training_epoch` in :attr:`clusters`: none before the warm-up
        ends or with ``clustering=False``; computed once per clustered epoch; after a restore, the
        checkpoint's on this device with their queue cache. Idempotent."""
        epoch = self.training_epoch()
        if not self.clustered_epoch(epoch):
            self.clusters, self.clusters_epoch = None, epoch
            self._restored_queue_probs = None
            return
        if self.clusters is None or self.clusters_epoch != epoch:
            # iterating a DataLoader draws from the global RNG: the step's views must not depend on
            # whether the prototypes were computed at the epoch's start or at a resumed batch
            cuda = [self.device] if self.device.type == "cuda" else []
            with torch.random.fork_rng(devices=cuda, device_type="cuda"):
                self.clusters = self.compute_clusters(self.cluster_dataloader(), epoch)
            self.clusters_epoch = epoch
            record = self.cluster_log[-1]
            self.log("cluster_seconds", record["seconds"], on_epoch=True, sync_dist=True)
            if "nmi" in record:
                self.log("cluster_nmi", record["nmi"], on_epoch=True, sync_dist=True)
        elif self._restored:  # restored from a checkpoint: onto this device, with its queue cache
            c, dev = self.clusters, self.device
            self.clusters = ClusterResult(
                [t.to(dev) for t in c.im2cluster],
                [t.to(dev) for t in c.centroids],
                [t.to(dev) for t in c.density],
                [t.to(dev) for t in c.parents],
                list(c.objective),
            )
            if self._restored_queue_probs is not None:
                self.model.set_queue_cache(self.clusters, self._restored_queue_probs)
        self._restored_queue_probs = None
        self._restored = False

    def training_step(self, batch: Any, batch_idx: int = 0) -> dict[str, torch.Tensor]:
        x, _, index = split_indexed_batch(batch)
        if index is None:
            raise UserInputError(
                "HCSCTask needs the dataset index of every image: batches (images, labels, index) "
                "or a dict with 'index' (wrap the data set in plugins.methods.hcsc.task.IndexedDataset)."
            )
        index = index.to(x.device)
        xq, xk = self.views(x)
        self.model.selection_seed = _seed_of(self.hparams.seed, self.batch_number(batch_idx))
        loss, logs = self.model(xq, xk, index, self.clusters, self.local_crops(x))
        if self._trainer is not None:
            n = x.shape[0]
            self.log("train_loss", loss, prog_bar=True, batch_size=n)
            for name in ("loss_ins", "loss_proto", "kept"):  # parts (the warm-up's are CPU zeros)
                self.log(f"train_{name}", logs[name].to(loss.device), batch_size=n)
        out = {"loss": loss}
        if "keep" in logs:  # for SelectionDiagnostics: this rank's masks, the queue's tags
            out.update(keep=logs["keep"], queue_tags=logs["queue_tags"], index=index)
        return out

    def collapse_features(self, batch: Any, on: str = "representation") -> torch.Tensor:
        """Hook for :class:`plugins.monitoring.CollapseMonitor`: the query encoder's output r
        (``"representation"``) or its projection head's output z (``"embedding"``)."""
        r = self.model.encoder(self.prepare(split_batch(batch)[0]))
        return r if on == "representation" else self.model.online[1](r)

    def configure_optimizers(self) -> dict[str, Any]:
        """As :func:`train_hcsc`: SGD (MoCo v2: lr ``lr * batch_size / 256``, momentum, weight
        decay) or Adam (lr 1e-3, weight decay 1e-6) on the query encoder and head, with a per-step
        cosine schedule over the trainer's estimated steps."""
        h = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        if h.optimizer == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(
                params,
                h.lr * h.batch_size / 256,
                momentum=h.sgd_momentum,
                weight_decay=h.weight_decay,
            )
        else:
            opt = torch.optim.Adam(params, lr=1e-3, weight_decay=1e-6)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.total_steps())
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the epoch's prototypes and the queue-to-prototype cache (plain tensors and lists)."""
        c = self.clusters
        checkpoint["hcsc"] = {
            "clusters": None
            if c is None
            else {f.name: getattr(c, f.name) for f in dataclasses.fields(c)},
            "clusters_epoch": self.clusters_epoch,
            "queue_probs": self.model.queue_cache(c),
            "cluster_log": [dict(r) for r in self.cluster_log],
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("hcsc")
        if state is None:
            return
        self.clusters = None if state["clusters"] is None else ClusterResult(**state["clusters"])
        self.clusters_epoch = int(state["clusters_epoch"])
        self._restored_queue_probs = state["queue_probs"]
        self._restored = True
        self.cluster_log = [
            {k: float(v) for k, v in r.items()} for r in state.get("cluster_log", [])
        ]


class SelectionDiagnostics(Callback):
    """How well instance selection (HCSC eqs. 4-5) finds the false negatives: per clustered epoch,
    the fraction of the queue's same-class negatives it removed (``fn_removed``) and of its
    other-class negatives (``tn_removed``), counted over the epoch's batches as
    :func:`plugins.methods.hcsc.train.train_hcsc` counts them (:func:`selection_stats`).

    ``labels``: (N,) the true class of each training image by dataset index; a diagnostic only, never
    trained on. Under DDP each rank counts its own queries and the epoch's fractions are of the
    counts summed over the ranks. The counts travel in Lightning
    checkpoints, so a run resumed in the middle of an epoch reports the uninterrupted run's values.
    """

    def __init__(self, labels: torch.Tensor) -> None:
        self.labels = torch.as_tensor(labels).long().cpu()
        self.counts = torch.zeros(4, dtype=torch.long)
        self.batches = 0  # batches of the current epoch already counted
        self.fn_removed: list[float] = []
        self.tn_removed: list[float] = []

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.batches == 0:
            self.counts.zero_()
        if isinstance(outputs, Mapping) and "keep" in outputs:
            tags = outputs["queue_tags"].cpu()
            queue_labels = torch.where(tags >= 0, self.labels[tags.clamp_min(0)], -1)
            query_labels = self.labels[outputs["index"].cpu()]
            stats = selection_stats(outputs["keep"].cpu(), query_labels, queue_labels)
            self.counts += torch.stack(stats)
        self.batches += 1
        if self.batches >= trainer.num_training_batches:  # the epoch's last batch
            self.batches = 0
            # every rank ends its epoch here: the fractions are of all ranks' queries, not rank 0's
            device = getattr(pl_module, "device", None) or torch.device("cpu")
            total = trainer.strategy.reduce(self.counts.to(device), reduce_op="sum").cpu()
            if total[1] > 0:
                self.fn_removed.append(float(total[0] / total[1]))
                self.tn_removed.append(float(total[2] / total[3].clamp_min(1)))

    def state_dict(self) -> dict[str, Any]:
        return {
            "counts": self.counts.tolist(),
            "batches": self.batches,
            "fn_removed": list(self.fn_removed),
            "tn_removed": list(self.tn_removed),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.counts = torch.tensor(state_dict["counts"], dtype=torch.long)
        self.batches = int(state_dict["batches"])
        self.fn_removed = [float(v) for v in state_dict["fn_removed"]]
        self.tn_removed = [float(v) for v in state_dict["tn_removed"]]
