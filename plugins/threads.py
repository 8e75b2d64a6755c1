"""One place for CPU thread counts.

On a small or shared CPU, torch's and the BLAS/OpenMP pools' default of one thread per core is often
several times slower than one thread: small ops are too small to split, and threads that spin
waiting for a busy core stall everyone (measured on this project's 2-core machine: a DirectCLR step
0.3 s vs 2 s, the 30-node graph demo and DCC's small convolutions 5-10x). Methods state their
default policy with :func:`cpu_threads`; the command's ``--threads N`` (``RunContext.threads``)
always wins over it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def cpu_is_busy() -> bool:
    """True when the 1-minute load average is at least the number of cores."""
    return hasattr(os, "getloadavg") and os.getloadavg()[0] >= (os.cpu_count() or 1)


@contextmanager
def cpu_threads(n: int | None) -> Iterator[int]:
    """Pin torch's intra-op threads and the BLAS/OpenMP pools to ``n`` inside the block.

    ``None`` leaves them as they are. Restores the previous counts afterwards. Yields the count
    in effect.
    """
    if n is None:
        yield torch.get_num_threads()
        return
    if n < 1:
        raise ValueError(f"thread count must be at least 1, got {n}")
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(n):
            yield n
    finally:
        torch.set_num_threads(before)
