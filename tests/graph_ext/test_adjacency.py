"""normalized_adjacency against the dense formula D^-1/2 (A + I) D^-1/2 written with diag matrices."""

import pytest
import torch

from graph_ext.adjacency import dense_adjacency, normalize_dense, normalized_adjacency


def _reference(edge_index: torch.Tensor, n: int) -> torch.Tensor:
    a = torch.zeros(n, n, dtype=torch.float64)
    for s, d in edge_index.T.tolist():
        if s != d:
            a[d, s] = 1.0
    a_hat = a + torch.eye(n, dtype=torch.float64)
    d_inv_sqrt = torch.diag(a_hat.sum(1) ** -0.5)
    return d_inv_sqrt @ a_hat @ d_inv_sqrt


def test_matches_dense_formula_with_isolated_node_duplicates_and_loops() -> None:
    n = 6  # node 5 is isolated; (0, 1) duplicated; a self-loop on 2; one directed edge 3 -> 4
    edge_index = torch.tensor([[0, 1, 0, 1, 2, 2, 3], [1, 0, 1, 2, 1, 2, 4]])
    ref = _reference(edge_index, n)
    dense = normalized_adjacency(edge_index, n)
    sparse = normalized_adjacency(edge_index, n, sparse=True).to_dense()
    assert torch.allclose(dense.double(), ref, atol=1e-6)
    assert torch.allclose(sparse.double(), ref, atol=1e-6)
    assert dense[5, 5] == pytest.approx(1.0)  # isolated node keeps itself


def test_random_symmetric_graph_is_symmetric_and_matches() -> None:
    g = torch.Generator().manual_seed(0)
    n = 30
    a = (torch.rand(n, n, generator=g) < 0.1).triu(1)
    a = a | a.T
    edge_index = a.nonzero().T.flip(0)
    out = normalized_adjacency(edge_index, n)
    assert torch.allclose(out.double(), _reference(edge_index, n), atol=1e-6)
    assert torch.allclose(out, out.T)
    assert torch.allclose(normalize_dense(dense_adjacency(edge_index, n)), out)


def test_out_of_range_edges_raise() -> None:
    with pytest.raises(ValueError, match="4 nodes"):
        normalized_adjacency(torch.tensor([[0, 4], [1, 0]]), 4)


def test_sparse_copy_product_has_the_dense_values_and_gradients() -> None:
    from graph_ext.adjacency import adjacency_matmul, with_sparse_copy

    g = torch.Generator().manual_seed(0)
    s = torch.rand(40, 40, generator=g, dtype=torch.float64)
    s = (s * (s > 0.95)).requires_grad_(True)  # ~5% non-zero, gradient wanted for every entry
    h = torch.randn(40, 3, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(40, 3, generator=g, dtype=torch.float64)
    a = s * 2.0 + s.T  # a non-symmetric function of the variable
    expected = torch.autograd.grad(((a @ h) * w).sum(), [s, h])
    a = s * 2.0 + s.T
    copy = with_sparse_copy(a, max_density=0.2)
    assert not isinstance(copy, torch.Tensor)
    got = torch.autograd.grad((adjacency_matmul(copy, h) * w).sum(), [s, h])
    for e, o in zip(expected, got, strict=True):
        torch.testing.assert_close(o, e, rtol=1e-12, atol=1e-12)
    assert with_sparse_copy(a, max_density=0.01) is a  # too dense: the matrix itself
