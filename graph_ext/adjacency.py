"""GCN normalisations of an adjacency (Kipf & Welling, ICLR 2017, eq. 2), undirected and directed.

Row ``i`` of every matrix here holds the messages node ``i`` receives: ``A[dst, src] = w`` for an
edge ``src -> dst`` of weight ``w`` (1 without weights), as PyG's ``GCNConv``. With
``A_hat = A + I`` (a self-loop of weight 1 on every node):

* undirected (the papers' setting, the default): ``D^-1/2 A_hat D^-1/2`` with ``D`` the row sums of
  ``A_hat`` (in-degree + 1; weighted: the sum of incoming weights + 1), which is PyG's ``gcn_norm``;
* directed (``directed=True``): ``D_in^-1/2 A_hat D_out^-1/2``, i.e.
  ``A_norm[i, j] = A_hat[i, j] / sqrt(d_in(i) d_out(j))`` with ``d_in`` the row sums (what ``i``
  receives + 1) and ``d_out`` the column sums (what ``j`` sends + 1). Written with the source as
  the row (``B = A^T``), it is the in/out-degree normalisation ``D_out^-1/2 B_hat D_in^-1/2`` of
  directed GCNs. On a symmetric ``A`` both are the same matrix.

Weights enter as the GCN's ``edge_weight``: the entries of ``A``, and so the degrees.

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


def _check_weights(edge_weight: torch.Tensor | None, edge_index: torch.Tensor) -> None:
    if edge_weight is not None and tuple(edge_weight.shape) != (edge_index.shape[1],):
        raise ValueError(
            f"edge_weight must have shape ({edge_index.shape[1]},) (one per edge), "
            f"got {tuple(edge_weight.shape)}"
        )


def dense_adjacency(
    edge_index: torch.Tensor,
    num_nodes: int,
    dtype: torch.dtype = torch.float32,
    edge_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """(N, N) matrix with ``A[dst, src] = 1`` (or ``edge_weight``) for every edge ``src -> dst``.

    Rows are message targets, as in PyG's ``GCNConv``, so ``A @ X`` sums the incoming neighbours.
    Duplicate edges are merged without weights and add up their weights with them.
    """
    _check_edges(edge_index, num_nodes)
    _check_weights(edge_weight, edge_index)
    adj = torch.zeros(num_nodes, num_nodes, dtype=dtype, device=edge_index.device)
    if edge_weight is None:
        adj[edge_index[1], edge_index[0]] = 1.0
    else:
        adj.index_put_((edge_index[1], edge_index[0]), edge_weight.to(dtype), accumulate=True)
    return adj


def normalize_dense(adj: torch.Tensor, directed: bool = False) -> torch.Tensor:
    """The GCN normalisation of a dense (N, N) ``adj`` (differentiable; module docstring).

    Undirected: ``D^-1/2 (A + I) D^-1/2``, ``D`` the row sums. ``directed``:
    ``D_in^-1/2 (A + I) D_out^-1/2``, ``D_in`` the row sums and ``D_out`` the column sums.
    ``adj`` must have a zero diagonal (self-loops are added here) and no negative entry.
    """
    a_hat = adj + torch.eye(adj.shape[0], dtype=adj.dtype, device=adj.device)
    d_in = a_hat.sum(1).rsqrt()  # >= 1 thanks to the self-loop, so never inf
    d_out = a_hat.sum(0).rsqrt() if directed else d_in
    return d_in[:, None] * a_hat * d_out[None, :]


def normalized_adjacency(
    edge_index: torch.Tensor,
    num_nodes: int,
    sparse: bool = False,
    edge_weight: torch.Tensor | None = None,
    directed: bool = False,
) -> torch.Tensor:
    """The GCN normalisation (module docstring) of a graph given as an edge list.

    Args:
        edge_index: (2, E) long, ``src -> dst``; existing self-loops are dropped (every node gets
            one of weight 1) and duplicate edges merged (their weights add up).
        num_nodes: N.
        sparse: return a sparse COO tensor (for full graphs) instead of a dense (N, N) one.
        edge_weight: (E,) non-negative weights (``None``: every edge weighs 1).
        directed: ``D_in^-1/2 (A + I) D_out^-1/2`` instead of ``D^-1/2 (A + I) D^-1/2`` with the
            in-degree on both sides (PyG ``gcn_norm``, which the papers' views use even when
            dropping edges made them asymmetric).

    Returns:
        (N, N) float32 tensor on ``edge_index``'s device; row ``i`` weights the neighbours that
        send messages to ``i``.
    """
    if not sparse:
        adj = dense_adjacency(edge_index, num_nodes, edge_weight=edge_weight)
        adj.fill_diagonal_(0.0)
        return normalize_dense(adj, directed)
    _check_edges(edge_index, num_nodes)
    _check_weights(edge_weight, edge_index)
    src, dst = edge_index
    keep = src != dst
    loops = torch.arange(num_nodes, device=edge_index.device)
    shape = (num_nodes, num_nodes)
    if edge_weight is None:
        key = torch.cat([dst[keep] * num_nodes + src[keep], loops * num_nodes + loops]).unique()
        rows, cols = key // num_nodes, key % num_nodes  # unique by construction
        a = torch.ones(rows.shape, device=edge_index.device)
    else:
        index = torch.cat([torch.stack([dst[keep], src[keep]]), loops.expand(2, -1)], 1)
        a = torch.cat([edge_weight[keep].float(), torch.ones(num_nodes, device=loops.device)])
        merged = torch.sparse_coo_tensor(index, a, shape, check_invariants=False).coalesce()
        (rows, cols), a = merged.indices(), merged.values()
    d_in = torch.zeros(num_nodes, device=a.device).index_add_(0, rows, a).rsqrt()
    if directed:
        d_out = torch.zeros(num_nodes, device=a.device).index_add_(0, cols, a).rsqrt()
    else:
        d_out = d_in
    values = d_in[rows] * a * d_out[cols]
    indices = torch.stack([rows, cols])
    return torch.sparse_coo_tensor(indices, values, shape, check_invariants=False).coalesce()
