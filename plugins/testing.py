"""Helpers for testing distributed code on one machine: a real gloo group of CPU processes.

Used by our DDP tests (a gathered loss must give the single-process loss and gradient); users can
check their own losses the same way::

    def worker(rank, out_dir):          # module-level, so that it pickles by reference
        ...                             # the gloo group is initialised here
        torch.save(result, f"{out_dir}/rank{rank}.pt")

    run_gloo(worker, 2, out_dir)
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, worker: Callable[..., Any], world_size: int, port: int, args: tuple) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    try:
        worker(rank, *args)
    finally:
        dist.destroy_process_group()


def run_gloo(worker: Callable[..., Any], world_size: int, *args: Any) -> None:
    """Run ``worker(rank, *args)`` in ``world_size`` processes joined in a gloo process group.

    Raises when any process fails (``torch.multiprocessing.spawn`` re-raises its error).
    """
    mp.spawn(_entry, args=(worker, world_size, free_port(), args), nprocs=world_size, join=True)
