import math

import pytest
import torch

from agri_ext import within_class_nt_xent
from agri_ext.loss import WithinClassNTXentLoss
from plugins.losses import nt_xent


def _reference(z1, z2, labels, t):
    """Explicit float64 loop: anchor i's denominator holds only same-class views k != i."""
    z = torch.cat([z1, z2]).double()
    z = z / z.norm(dim=1, keepdim=True)
    y = labels.repeat(2).tolist()
    n = z1.shape[0]
    total = 0.0
    for i in range(2 * n):
        p = (i + n) % (2 * n)
        denom = 0.0
        for k in range(2 * n):
            if k != i and y[k] == y[i]:
                denom += math.exp(float(z[i] @ z[k]) / t)
        total += -float(z[i] @ z[p]) / t + math.log(denom)
    return total / (2 * n)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize(
    "labels", [[0, 0, 1, 1, 1, 2], [3, 1, 3, 1, 0, 0, 0], [5], [0, 1], [2, 2, 2, 7]]
)
def test_within_class_matches_explicit_loop(labels, dtype, tol):
    torch.manual_seed(len(labels))
    y = torch.tensor(labels)
    z1, z2 = torch.randn(len(y), 5, dtype=dtype), torch.randn(len(y), 5, dtype=dtype)
    got = within_class_nt_xent(z1, z2, y, temperature=0.5)
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert got.item() == pytest.approx(_reference(z1, z2, y, 0.5), abs=tol, rel=tol)


def test_equals_nt_xent_when_all_labels_equal():
    torch.manual_seed(0)
    z1, z2 = torch.randn(9, 7, dtype=torch.float64), torch.randn(9, 7, dtype=torch.float64)
    y = torch.full((9,), 4)
    for t in (0.1, 0.5):
        assert torch.allclose(within_class_nt_xent(z1, z2, y, t), nt_xent(z1, z2, t), atol=1e-12)


def test_singleton_class_adds_exactly_zero_and_gradients_are_finite():
    torch.manual_seed(0)
    z1 = torch.randn(4, 3, requires_grad=True)
    z2 = torch.randn(4, 3, requires_grad=True)
    loss_all_single = within_class_nt_xent(z1, z2, torch.arange(4))
    assert loss_all_single.item() == pytest.approx(0.0, abs=1e-6)
    loss = WithinClassNTXentLoss(0.5)(z1, z2, torch.tensor([0, 0, 1, 2]))
    loss.backward()
    assert torch.isfinite(z1.grad).all() and z1.grad.abs().sum() > 0


def test_half_precision_input_is_upcast():
    torch.manual_seed(0)
    z1, z2 = torch.randn(6, 4), torch.randn(6, 4)
    y = torch.tensor([0, 0, 1, 1, 0, 1])
    ref = within_class_nt_xent(z1, z2, y)
    got = within_class_nt_xent(z1.bfloat16(), z2.bfloat16(), y)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(ref.item(), abs=0.05)


def test_shape_errors():
    with pytest.raises(ValueError, match="labels must have shape"):
        within_class_nt_xent(torch.randn(3, 2), torch.randn(3, 2), torch.tensor([0, 1]))
