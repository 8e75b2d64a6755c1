"""PGD adversarial view: projection optimality, budgets, bounds, loss ascent, discrete symmetry."""

import pytest
import torch

from graph_ext.adjacency import dense_adjacency, normalize_dense
from graph_ext.attack import flip_edges, pgd_adversarial_view, project_capped_simplex
from graph_ext.config import ARIELConfig
from graph_ext.loss import grace_loss
from graph_ext.model import ARIEL
from graph_ext.train import sparse_features


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_projection_is_feasible_optimal_and_idempotent(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    s = torch.rand(200, generator=g, dtype=torch.float64) * 4 - 1  # sum of clip(s) ~ 90 > budget
    budget = 12.5
    p = project_capped_simplex(s, budget, iters=60)
    assert p.min() >= 0 and p.max() <= 1
    assert p.sum().item() == pytest.approx(budget, abs=1e-6)
    assert p.sum() <= budget
    # KKT: p = clip(s - mu, 0, 1) with one mu for all entries
    inside = (p > 1e-9) & (p < 1 - 1e-9)
    mu = (s - p)[inside]
    assert inside.any() and (mu.max() - mu.min()) < 1e-6
    assert (s[p <= 1e-9] <= mu.mean() + 1e-6).all()
    assert (s[p >= 1 - 1e-9] >= 1 + mu.mean() - 1e-6).all()
    assert torch.equal(project_capped_simplex(p, budget, iters=60), p)


def test_projection_under_budget_is_just_the_clip() -> None:
    s = torch.tensor([-0.5, 0.2, 0.3, 1.7])
    p = project_capped_simplex(s, budget=5.0)
    assert torch.equal(p, s.clamp(0, 1))
    assert torch.equal(project_capped_simplex(p, 5.0), p)


def test_projection_float32_stays_within_budget() -> None:
    s = torch.rand(50_000, generator=torch.Generator().manual_seed(0)) * 3
    p = project_capped_simplex(s, 100.0)
    assert p.sum() <= 100.0 + 1e-3
    assert p.sum().item() == pytest.approx(100.0, rel=1e-3)
    assert torch.equal(project_capped_simplex(p, 100.0), p)


def _setup(n: int = 24, f: int = 10, p: float = 0.2):
    g = torch.Generator().manual_seed(0)
    a = (torch.rand(n, n, generator=g) < p).triu(1)
    a = a | a.T
    edge_index = a.nonzero().T
    adj = dense_adjacency(edge_index, n)
    x = (torch.rand(n, f, generator=g) < 0.3).float()
    torch.manual_seed(0)
    model = ARIEL(f, ARIELConfig(hidden=8, proj_hidden=8, temperature=0.5))
    x1 = x * (torch.rand(f, generator=g) > 0.3)
    view1 = (x1, normalize_dense(adj))
    return model, adj, x, view1


def test_pgd_respects_budgets_and_gives_symmetric_discrete_graph() -> None:
    model, adj, x, view1 = _setup()
    budget = 0.2 * float(adj.triu(1).sum())
    adv = pgd_adversarial_view(
        model,
        view1,
        (adj, x),
        steps=5,
        edge_budget=budget,
        alpha=200.0,
        beta=0.01,
        feature_eps=0.04,
    )
    assert adv.flip_probs.min() >= 0 and adv.flip_probs.max() <= 1
    assert adv.flip_probs.sum() <= budget + 1e-4
    assert adv.delta.abs().max() <= 0.04 + 1e-7
    assert torch.allclose(adv.x, x + adv.delta)
    assert torch.equal(adv.adj, adv.adj.T)
    assert torch.count_nonzero(torch.diagonal(adv.adj)) == 0
    assert set(adv.adj.unique().tolist()) <= {0.0, 1.0}
    flipped = int((adv.adj != adj).triu(1).sum())
    assert 0 < flipped <= int(budget)
    assert all(p.grad is None for p in model.parameters())  # encoder frozen


def test_pgd_step_increases_the_attacked_loss() -> None:
    model, adj, x, view1 = _setup()
    budget = 0.2 * float(adj.triu(1).sum())
    with torch.no_grad():
        z1 = model.embed_projected(*view1)
        clean = grace_loss(z1, model.embed_projected(x, normalize_dense(adj)), 0.5)
    for steps in (1, 3):
        adv = pgd_adversarial_view(model, z1, (adj, x), steps, budget, 200.0, 0.01, 0.04)
        n = adj.shape[0]
        upper = torch.triu_indices(n, n, 1)
        with torch.no_grad():
            relaxed = normalize_dense(flip_edges(adj, adv.flip_probs, upper))
            attacked = grace_loss(z1, model.embed_projected(adv.x, relaxed), 0.5)
        assert attacked > clean


def test_flip_edges_flips_exactly_the_chosen_pairs() -> None:
    adj = torch.tensor([[0.0, 1, 0], [1, 0, 0], [0, 0, 0]])
    upper = torch.triu_indices(3, 3, 1)  # pairs (0,1), (0,2), (1,2)
    out = flip_edges(adj, torch.tensor([1.0, 1.0, 0.0]), upper)
    assert torch.equal(out, torch.tensor([[0.0, 0, 1], [0, 0, 0], [1, 0, 0]]))


def _reference_pgd(model, z1, adj, x, steps, budget, alpha, beta, feature_eps, t):
    """ARIEL's PGD written plainly: full grace_loss, dense flip matrix, autograd w.r.t. S and delta."""
    n = adj.shape[0]
    upper = torch.triu_indices(n, n, 1)
    s = torch.zeros(upper.shape[1], dtype=adj.dtype)
    delta = torch.zeros_like(x)
    for k in range(steps):
        s.requires_grad_(True)
        delta.requires_grad_(True)
        adj_p = normalize_dense(flip_edges(adj, s, upper))
        loss = grace_loss(z1, model.embed_projected(x + delta, adj_p), t)
        grad_s, grad_d = torch.autograd.grad(loss, [s, delta])
        with torch.no_grad():
            s = project_capped_simplex(s + alpha / (k + 1) ** 0.5 * grad_s, budget)
            delta = (delta + beta * grad_d.sign()).clamp(-feature_eps, feature_eps)
    return s.detach(), delta.detach()


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("n,p", [(30, 0.2), (120, 0.02)])  # relaxed adjacency dense / sparse copy
def test_pgd_equals_the_plain_reference(sparse: bool, n: int, p: float) -> None:
    """Same S and delta as the plain implementation (float64), with dense or sparse features."""
    model, adj, x, view1 = _setup(n=n, f=12, p=p)
    model = model.double()
    adj, x = adj.double(), x.double()
    view1 = (view1[0].double(), view1[1].double())
    with torch.no_grad():
        z1 = model.embed_projected(*view1)
    budget = 0.2 * float(adj.triu(1).sum())
    args = (5, budget, 200.0, 0.01, 0.04)
    s_ref, d_ref = _reference_pgd(model, z1, adj, x, *args, 0.5)
    x_sparse = sparse_features(x, max_density=1.0) if sparse else None  # CSR copy
    adv = pgd_adversarial_view(model, z1, (adj, x), *args, 0.5, x_sparse=x_sparse)
    assert torch.count_nonzero(s_ref) > 0 and torch.count_nonzero(d_ref) > 0
    torch.testing.assert_close(adv.delta, d_ref, rtol=0.0, atol=1e-15)
    torch.testing.assert_close(adv.flip_probs, s_ref, rtol=0.0, atol=1e-7)
    assert all(p.grad is None for p in model.parameters())
