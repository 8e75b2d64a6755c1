"""What the bundles' ``configs/multi_gpu_train.yaml`` plug in (MONAI model-zoo pattern, ``torchrun``).

``torchrun --nproc_per_node N -m monai.bundle run --config_file "['configs/train.yaml',
'configs/multi_gpu_train.yaml']"`` starts N processes; each one

* joins the process group with :func:`init_distributed` (NCCL on CUDA, gloo on CPU) and takes the
  device :func:`local_device` names from ``LOCAL_RANK``;
* wraps the network in :class:`BundleDDP` after :func:`plugins.distributed.convert_global_batchnorm`
  (every BatchNorm, DSBN's per-domain ones included, normalises with the statistics of the global
  batch, as ``SyncBatchNorm`` would, which refuses CPU tensors);
* reads its own share of the training data (``DistributedSampler`` / the rank's batches);
* computes SupCon and margin regularisers on every rank's embeddings (``gather_distributed``).

With these, one DDP step gives the gradient of one process on the whole (global) batch; the test
``tests/monai_ext/test_multi_gpu_train.py`` checks it on a 2-process gloo group.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from monai.handlers import CheckpointSaver, StatsHandler, TensorBoardStatsHandler
from torch.nn.parallel import DistributedDataParallel

from monai_ext.supercon.data import class_balanced_sampler
from plugins.distributed import convert_global_batchnorm, rank, world_size
from plugins.errors import UserInputError
from plugins.options import parse_bool

__all__ = [
    "local_device",
    "init_distributed",
    "finish_distributed",
    "BundleDDP",
    "wrap_ddp",
    "rank_zero_handlers",
    "not_rank_zero",
    "distributed_sampler",
    "DistributedBalancedSampler",
    "per_rank_batches",
]


def local_device() -> torch.device:
    """``cuda:<LOCAL_RANK>`` when CUDA is available, otherwise the CPU (``LOCAL_RANK`` is set by
    torchrun; 0 without it)."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return torch.device("cpu")


def init_distributed() -> bool:
    """Join torchrun's process group once: NCCL on CUDA, gloo on CPU (NCCL has no CPU tensors).
    Returns ``True`` (a config ``initialize`` item)."""
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        torch.cuda.set_device(local_device())
    return True


def finish_distributed() -> bool:
    """Leave the process group (the configs' ``finalize``); nothing when none is initialised."""
    if dist.is_initialized():
        dist.destroy_process_group()
    return True


class BundleDDP(DistributedDataParallel):
    """``DistributedDataParallel`` that the bundles' code can use like the network it wraps.

    * Attributes DDP lacks are read from the wrapped module (``network.encoder``,
      ``network.freeze_encoder(...)``, ``network.shared_head`` in the configs and training steps).
    * The methods named in ``forward_methods`` (e.g. ``forward_multi`` of the multi-domain U-Net)
      run *through DDP's forward*, so DDP prepares its gradient all-reduce for them; a direct call
      on the wrapped module would skip it and leave each rank with its own gradient.

    Args:
        module, **kwargs: as ``DistributedDataParallel``.
        forward_methods: names of the module's methods to route through ``forward``.
    """

    def __init__(self, module: torch.nn.Module, forward_methods: Sequence[str] = (), **kwargs: Any):
        super().__init__(module, **kwargs)
        self.forward_methods = tuple(forward_methods)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("module", "forward_methods"):
                raise
        module = super().__getattr__("module")
        if name in self.__dict__.get("forward_methods", ()):
            return functools.partial(self._through_forward, name)
        return getattr(module, name)

    def _through_forward(self, name: str, *args: Any, **kwargs: Any) -> Any:
        # DDP's forward calls ``self.module(...)``, i.e. ``module.forward``: an instance attribute
        # shadows the class's forward for this one call
        self.module.forward = getattr(self.module, name)
        try:
            return self(*args, **kwargs)
        finally:
            del self.module.forward


def wrap_ddp(
    network: torch.nn.Module,
    device: torch.device,
    forward_methods: Sequence[str] = (),
    find_unused_parameters: bool = False,
) -> BundleDDP:
    """``network`` with global BatchNorm (:func:`convert_global_batchnorm`) on ``device``, wrapped in
    :class:`BundleDDP`.

    No buffer broadcast at each forward: global BatchNorm keeps the running statistics equal on
    every rank already, and a forward without collectives lets ranks validate different numbers
    of items.
    Joins the process group first when no ``initialize`` item has (a config may build its
    network while checking its settings).
    """
    init_distributed()
    net = convert_global_batchnorm(network).to(device)
    ids = [device] if device.type == "cuda" else None
    # torch >= 2.14 names it forward_sync_buffers (buffers are still copied from rank 0 at init)
    names = inspect.signature(DistributedDataParallel.__init__).parameters
    no_sync = "forward_sync_buffers" if "forward_sync_buffers" in names else "broadcast_buffers"
    return BundleDDP(
        net,
        forward_methods=forward_methods,
        device_ids=ids,
        find_unused_parameters=find_unused_parameters,
        **{no_sync: False},
    )


def rank_zero_handlers(handlers: Sequence[Any] | None) -> list[Any]:
    """Rank 0 keeps every handler; other ranks drop those that only write (logs, TensorBoard,
    checkpoints) and keep those that must run in step on every rank (validation, whose metrics
    are all-gathered; LR schedules; early stopping; checkpoint loading; MetricsSaver, which
    gathers and writes on rank 0 itself). ``None`` entries (components a config disabled with
    ``_disabled_``, see :func:`not_rank_zero`) are dropped on every rank. Single-process runs
    (no process group) are rank 0."""
    handlers = [h for h in handlers or [] if h is not None]
    if rank() == 0:
        return handlers
    writers = (StatsHandler, TensorBoardStatsHandler, CheckpointSaver)
    return [h for h in handlers if not isinstance(h, writers)]


def not_rank_zero() -> bool:
    """True on ranks other than 0: a config's ``_disabled_`` for writers that must not even be
    built there (``TensorBoardStatsHandler`` creates its event file when it is built)."""
    return rank() != 0


class DistributedBalancedSampler(torch.utils.data.DistributedSampler):
    """Class-balanced draws (with replacement, the weights of
    :func:`monai_ext.supercon.data.class_balanced_sampler`) split between ranks: every rank draws
    the same global sequence from ``seed + epoch`` and keeps every ``num_replicas``-th item.

    Args:
        labels: class of every item.
        seed: shared by all ranks.
        num_replicas, rank: default: the process group's.
    """

    def __init__(
        self,
        labels: Sequence[int],
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ):
        super().__init__(range(len(labels)), num_replicas, rank, shuffle=True, seed=seed)
        self.weights = class_balanced_sampler(np.asarray(labels)).weights

    def __iter__(self):  # type: ignore[override]
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.multinomial(self.weights, self.total_size, True, generator=gen)
        return iter(order[self.rank : self.total_size : self.num_replicas].tolist())


def distributed_sampler(
    items: Sequence[dict],
    balanced: Any = False,
    seed: int = 0,
    batch_size: int = 1,
    num_replicas: int | None = None,
    rank: int | None = None,
) -> torch.utils.data.DistributedSampler:
    """This rank's share of a datalist (padded so that every rank gets as many items): shuffled,
    or class-balanced like :func:`monai_ext.supercon.data.class_balanced_sampler` when
    ``balanced``. MONAI's trainer calls ``set_epoch`` at every epoch.

    ``batch_size`` is per process: a share smaller than one batch is refused in one sentence
    (SuperCon's stage 1 drops incomplete batches, so it would train no step at all).
    ``num_replicas``/``rank`` default to the process group's, which is joined if needed.
    """
    if num_replicas is None:
        init_distributed()
    if parse_bool(balanced):
        labels = [int(i["label"]) for i in items]
        sampler = DistributedBalancedSampler(labels, int(seed), num_replicas, rank)
    else:
        sampler = torch.utils.data.DistributedSampler(
            range(len(items)), num_replicas, rank, shuffle=True, seed=int(seed)
        )
    if sampler.num_samples < int(batch_size):
        raise UserInputError(
            f"multi_gpu_train.yaml: each of the {sampler.num_replicas} processes gets "
            f"{sampler.num_samples} of the {len(items)} training items, fewer than batch_size "
            f"{batch_size} (batch_size is per process); lower --batch_size."
        )
    return sampler


def per_rank_batches(num_batches: int) -> int:
    """``num_batches`` rounded up to a multiple of the world size, so that every rank of a
    :class:`~monai_ext.multidomain.sampler.DomainBalancedBatchSampler` takes as many steps (a rank
    with one step fewer would leave the others waiting in DDP's all-reduce)."""
    n = world_size()
    return -(-int(num_batches) // n) * n
