"""GRACE loss and ARIEL's information regulariser against explicit per-node loops (float64)."""

import math

import pytest
import torch

from graph_ext.loss import fixed_view, grace_loss, grace_loss_to_fixed, info_regularizer


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


@pytest.mark.parametrize("n", [1, 2, 7, 1500])
@pytest.mark.parametrize("t", [0.4, 0.9])
def test_loss_to_fixed_view_equals_full_grace_loss_and_its_gradient(n: int, t: float) -> None:
    """The attack's cheaper loss: same value and same gradient w.r.t. z2 as autograd of the full
    grace_loss (n = 1500 takes the large-matrix branch of the symmetric product's backward)."""
    g = torch.Generator().manual_seed(n)
    z1 = torch.randn(n, 6, generator=g, dtype=torch.float64)
    z2 = torch.randn(n, 6, generator=g, dtype=torch.float64, requires_grad=True)
    full = grace_loss(z1, z2, t)
    (expected,) = torch.autograd.grad(full, z2)
    view = fixed_view(z1, t)
    cheap = grace_loss_to_fixed(view, z2)
    (grad,) = torch.autograd.grad(cheap, z2)
    assert cheap.item() == pytest.approx(full.item(), rel=1e-12)
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-14)
    # the precomputed z1-z1 term is the row log-sum-exp without the self-similarity
    z1n = torch.nn.functional.normalize(z1, dim=1)
    own = z1n @ z1n.T / t
    ref = [torch.logsumexp(torch.cat([own[i, :i], own[i, i + 1 :]]), 0) for i in range(n)]
    torch.testing.assert_close(view.lse, torch.stack(ref), rtol=1e-12, atol=0.0)


def test_loss_to_fixed_view_float32_matches_float64() -> None:
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(40, 8, generator=g), torch.randn(40, 8, generator=g)
    ref = grace_loss(z1.double(), z2.double(), 0.5).item()
    assert grace_loss_to_fixed(fixed_view(z1, 0.5), z2).item() == pytest.approx(ref, rel=1e-5)
