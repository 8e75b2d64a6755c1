"""Helpers for testing distributed code on one machine: a real gloo group of CPU processes.

Used by our DDP tests (a gathered loss must give the single-process loss and gradient); users can
check their own losses the same way::

    def worker(rank):                   # module-level, so that it pickles by reference
        ...                             # the gloo group is initialised here
        return {"loss": loss.detach(), "grad": x.grad}

    per_rank = run_gloo(worker, 2)      # [rank 0's result, rank 1's result]
"""

from __future__ import annotations

import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(
    rank: int, worker: Callable[..., Any], world_size: int, port: int, out: str, args: tuple
) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    try:
        result = worker(rank, *args)
    finally:
        dist.destroy_process_group()
    torch.save(result, Path(out) / f"rank{rank}.pt")


def run_gloo(worker: Callable[..., Any], world_size: int, *args: Any) -> list[Any]:
    """Run ``worker(rank, *args)`` in ``world_size`` processes joined in a gloo process group.

    Returns the workers' return values in rank order (they travel through ``torch.save``).
    Raises when any process fails (``torch.multiprocessing.spawn`` re-raises its error).
    """
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(
            _entry,
            args=(worker, world_size, free_port(), out, args),
            nprocs=world_size,
            join=True,
        )
        return [
            torch.load(Path(out) / f"rank{r}.pt", weights_only=False) for r in range(world_size)
        ]
