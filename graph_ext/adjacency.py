"""Symmetric GCN normalisation D^-1/2 (A + I) D^-1/2 (Kipf & Welling, ICLR 2017, eq. 2).

Sparse for the stochastic views and full-graph inference, dense for the attack (which perturbs,
and differentiates with respect to, every entry). The dense form scales rows and columns by
broadcasting, ``d[:, None] * A * d[None, :]``,
instead of the two N x N products ``diag(d) @ A @ diag(d)`` of the reference code.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = [
    "DenseWithSparseCopy",
    "adjacency_matmul",
    "dense_adjacency",
    "normalize_dense",
    "normalized_adjacency",
    "with_sparse_copy",
]


class DenseWithSparseCopy(NamedTuple):
    """A dense (N, N) matrix that carries gradient, with a sparse copy of its current values.

    ``GCNLayer`` multiplies by the sparse copy and still returns the dense gradient
    ``dL/dA = g h^T`` (every entry, zeros included), so a mostly-zero but differentiable adjacency
    (the attack's relaxed ``A + S o (11^T - 2A - I)``) costs sparse products forward and for
    ``dL/dh``, and one dense product for ``dL/dA``. Build it with :func:`with_sparse_copy`.
    """

    dense: torch.Tensor
    sparse: torch.Tensor
    sparse_t: torch.Tensor


def with_sparse_copy(
    adj: torch.Tensor, max_density: float = 0.1
) -> DenseWithSparseCopy | torch.Tensor:
    """``adj`` with a sparse copy of its values (:class:`DenseWithSparseCopy`), or ``adj`` itself
    if more than ``max_density`` of its entries are non-zero (dense products are faster then)."""
    values = adj.detach()
    sparse = values.to_sparse()
    if sparse._nnz() > max_density * adj.numel():
        return adj
    return DenseWithSparseCopy(adj, sparse, values.T.to_sparse())


class _SparseForwardMatmul(torch.autograd.Function):
    """``A @ h`` by the sparse copy; backward ``dA = g h^T`` (dense), ``dh = A^T g`` (sparse)."""

    @staticmethod
    def forward(ctx, dense, sparse, sparse_t, h):  # type: ignore[override]
        ctx.save_for_backward(h)
        ctx.sparse_t = sparse_t
        return torch.sparse.mm(sparse, h)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        (h,) = ctx.saved_tensors
        grad_a = g @ h.T if ctx.needs_input_grad[0] else None
        grad_h = torch.sparse.mm(ctx.sparse_t, g) if ctx.needs_input_grad[3] else None
        return grad_a, None, None, grad_h


def adjacency_matmul(adj: torch.Tensor | DenseWithSparseCopy, h: torch.Tensor) -> torch.Tensor:
    """``adj @ h`` for a dense, sparse or :class:`DenseWithSparseCopy` adjacency (differentiable)."""
    if isinstance(adj, DenseWithSparseCopy):
        return _SparseForwardMatmul.apply(
            adj.dense, adj.sparse, adj.sparse_t, h.to(adj.dense.dtype)
        )
    if adj.layout == torch.strided:
        return adj @ h
    # sparse products have no reduced-precision kernels: under autocast (--precision
    # bf16-mixed) the aggregation runs in the adjacency's float32, autocast off
    with torch.autocast(h.device.type, enabled=False):
        return torch.sparse.mm(adj, h.to(adj.dtype))


def _check_edges(edge_index: torch.Tensor, num_nodes: int) -> None:
    if edge_index.ndim != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"edge_index must have shape (2, E), got {tuple(edge_index.shape)}")
    if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= num_nodes):
        raise ValueError(
            f"edge_index holds node ids in [{int(edge_index.min())}, {int(edge_index.max())}] "
            f"but the graph has {num_nodes} nodes"
        )


def dense_adjacency(
    edge_index: torch.Tensor, num_nodes: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """(N, N) 0/1 matrix with ``A[dst, src] = 1`` for every edge ``src -> dst`` (duplicates merged).

    Rows are message targets, as in PyG's ``GCNConv``, so ``A @ X`` sums the incoming neighbours.
    """
    _check_edges(edge_index, num_nodes)
    adj = torch.zeros(num_nodes, num_nodes, dtype=dtype, device=edge_index.device)
    adj[edge_index[1], edge_index[0]] = 1.0
    return adj


def normalize_dense(adj: torch.Tensor) -> torch.Tensor:
    """D^-1/2 (A + I) D^-1/2 of a dense (N, N) ``adj`` (differentiable; degrees are row sums).

    ``adj`` must have a zero diagonal (self-loops are added here).
    """
    a_hat = adj + torch.eye(adj.shape[0], dtype=adj.dtype, device=adj.device)
    d = a_hat.sum(1).rsqrt()  # >= 1 thanks to the self-loop, so never inf
    return d[:, None] * a_hat * d[None, :]


def normalized_adjacency(
    edge_index: torch.Tensor, num_nodes: int, sparse: bool = False
) -> torch.Tensor:
    """D^-1/2 (A + I) D^-1/2 from an edge list.

    Args:
        edge_index: (2, E) long, ``src -> dst``; existing self-loops and duplicate edges are merged.
        num_nodes: N.
        sparse: return a sparse COO tensor (for full graphs) instead of a dense (N, N) one.

    Returns:
        (N, N) float32 tensor on ``edge_index``'s device; row ``i`` weights the neighbours that
        send messages to ``i`` (PyG ``gcn_norm`` convention, degree = in-degree + 1).
    """
    if not sparse:
        adj = dense_adjacency(edge_index, num_nodes)
        adj.fill_diagonal_(0.0)
        return normalize_dense(adj)
    _check_edges(edge_index, num_nodes)
    src, dst = edge_index
    keep = src != dst
    loops = torch.arange(num_nodes, device=edge_index.device)
    key = torch.cat([dst[keep] * num_nodes + src[keep], loops * num_nodes + loops]).unique()
    rows, cols = key // num_nodes, key % num_nodes
    deg = torch.bincount(rows, minlength=num_nodes).float()
    d = deg.rsqrt()
    values = d[rows] * d[cols]
    shape = (num_nodes, num_nodes)
    indices = torch.stack([rows, cols])  # unique by construction
    return torch.sparse_coo_tensor(indices, values, shape, check_invariants=False).coalesce()
