"""GRACE loss and ARIEL's information regulariser against explicit per-node loops (float64)."""

import math

import pytest
import torch

from graph_ext.loss import grace_loss, info_regularizer


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def _l_loop(u: torch.Tensor, v: torch.Tensor, t: float) -> list[float]:
    """l(u, v)_i = -log(e^{s(u_i,v_i)/t} / (sum_j e^{s(u_i,v_j)/t} + sum_{j!=i} e^{s(u_i,u_j)/t}))."""
    n = u.shape[0]
    out = []
    for i in range(n):
        num = math.exp(_cos(u[i], v[i]) / t)
        den = sum(math.exp(_cos(u[i], v[j]) / t) for j in range(n))
        den += sum(math.exp(_cos(u[i], u[j]) / t) for j in range(n) if j != i)
        out.append(-math.log(num / den))
    return out


@pytest.mark.parametrize("n", [1, 2, 7])
@pytest.mark.parametrize("t", [0.4, 0.9])
def test_grace_loss_matches_per_node_loop(n: int, t: float) -> None:
    g = torch.Generator().manual_seed(n)
    z1 = torch.randn(n, 5, generator=g, dtype=torch.float64)
    z2 = torch.randn(n, 5, generator=g, dtype=torch.float64)
    a, b = _l_loop(z1, z2, t), _l_loop(z2, z1, t)
    expected = sum((x + y) / 2 for x, y in zip(a, b, strict=True)) / n
    assert grace_loss(z1, z2, t).item() == pytest.approx(expected, rel=1e-10)


def test_grace_loss_float32_and_identical_views_are_minimal() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 4, generator=g)
    other = torch.randn(6, 4, generator=g)
    ref = grace_loss(z.double(), other.double(), 0.5).item()
    assert grace_loss(z, other, 0.5).item() == pytest.approx(ref, rel=1e-5)
    # agreement between the views can only lower the loss relative to unrelated views
    assert grace_loss(z, z, 0.5) < grace_loss(z, other, 0.5)


def test_info_regularizer_matches_loop() -> None:
    g = torch.Generator().manual_seed(3)
    z1, z2, z = (torch.randn(5, 3, generator=g, dtype=torch.float64) for _ in range(3))
    t = 0.5

    def sim(a, b):
        return math.exp(_cos(a, b) / t)

    expected = (
        sum(max(0.0, 2 * sim(z1[i], z2[i]) - sim(z1[i], z[i]) - sim(z2[i], z[i])) for i in range(5))
        / 5
    )
    assert info_regularizer(z1, z2, z, t).item() == pytest.approx(expected, rel=1e-10)


def test_info_regularizer_does_not_push_the_clean_embedding() -> None:
    z1, z2, z = (torch.randn(4, 3, requires_grad=True) for _ in range(3))
    with torch.no_grad():
        z2.copy_(z1)  # views agree perfectly: regulariser active
    info_regularizer(z1, z2, z, 0.5).backward()
    assert z.grad is None or torch.count_nonzero(z.grad) == 0
    assert torch.count_nonzero(z1.grad) > 0
