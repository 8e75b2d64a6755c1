import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """These tests use tiny tensors: on a shared CPU, one intra-op thread is several times faster
    than oversubscribed ones (measured 7x on the 2-core CI box under load)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
