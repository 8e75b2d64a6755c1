"""plugins.threads: the one CPU-thread helper, and --threads winning over a method's policy."""

import pytest
import torch
from threadpoolctl import threadpool_info

from plugins.reporting import RunContext, RunDir
from plugins.threads import cpu_threads


def _blas_threads() -> set[int]:
    return {pool["num_threads"] for pool in threadpool_info()}


def test_cpu_threads_pins_torch_and_blas_then_restores():
    before = torch.get_num_threads()
    with cpu_threads(1) as n:
        assert n == 1 and torch.get_num_threads() == 1
        assert _blas_threads() <= {1}
    assert torch.get_num_threads() == before
    with cpu_threads(None) as n:  # leaves everything as it is
        assert n == before and torch.get_num_threads() == before
    with pytest.raises(ValueError, match="at least 1"):
        with cpu_threads(0):
            pass


def test_command_threads_win_over_the_method_default(tmp_path):
    before = torch.get_num_threads()
    ctx = RunContext(method="x", run_dir=RunDir(path=tmp_path / "a"), threads=2)
    with ctx.cpu_threads(default=1):
        assert torch.get_num_threads() == 2
    ctx = RunContext(method="x", run_dir=RunDir(path=tmp_path / "b"))
    with ctx.cpu_threads(default=1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
