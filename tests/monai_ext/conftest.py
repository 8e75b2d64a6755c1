"""Shared fixtures of the MONAI adapter tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny convolutions on a shared CPU: one thread avoids OpenMP spin contention (~5x faster).
    A test file opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
