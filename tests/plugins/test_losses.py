"""Every loss in :mod:`plugins.losses` against an explicit float64 loop written from the papers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from plugins.losses import (
    InfoNCELoss,
    MarginContrastiveLoss,
    NTXentLoss,
    SupConLoss,
    info_nce,
    margin_contrastive,
    nt_xent,
    sup_con,
)

# relative tolerance of our loss vs the float64 loop, per input dtype. Float32 and bfloat16 inputs
# are compared with a loop over the *same* (rounded) values, so only float32 arithmetic error remains.
RTOL = {torch.float64: 1e-6, torch.float32: 1e-5, torch.bfloat16: 1e-5}


# ----------------------------------------------------------------------------- reference loops
def _unit(x: torch.Tensor) -> np.ndarray:
    a = x.detach().double().cpu().numpy()
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def ref_nt_xent(z1, z2, t, positive_in_denominator=True) -> float:
    z = np.concatenate([_unit(z1), _unit(z2)])
    n2 = len(z)
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        p = (i + n) % n2
        den = 0.0
        for k in range(n2):
            if k == i or (k == p and not positive_in_denominator):
                continue
            den += math.exp(float(z[i] @ z[k]) / t)
        total += -float(z[i] @ z[p]) / t + math.log(den)
    return total / n2


def ref_info_nce(q, k, t, negatives=None) -> float:
    q, k = _unit(q), _unit(k)
    cols = list(k) + ([] if negatives is None else list(_unit(negatives)))
    total = 0.0
    for i in range(len(q)):
        den = sum(math.exp(float(q[i] @ c) / t) for c in cols)
        total += -float(q[i] @ k[i]) / t + math.log(den)
    return total / len(q)


def ref_sup_con(features, labels, t, tb, contrast_mode="all") -> float:
    f = _unit(features)  # (B, V, D)
    b, v, _ = f.shape
    labels = list(range(b)) if labels is None else [int(x) for x in labels]
    anchor_views = range(v) if contrast_mode == "all" else range(1)
    losses = []
    for ai in range(b):
        for av in anchor_views:
            others = [(ci, cv) for ci in range(b) for cv in range(v) if (ci, cv) != (ai, av)]
            positives = [(ci, cv) for ci, cv in others if labels[ci] == labels[ai]]
            if not positives:
                continue
            log_den = math.log(sum(math.exp(float(f[ai, av] @ f[ci, cv]) / t) for ci, cv in others))
            mean = sum(float(f[ai, av] @ f[ci, cv]) / t - log_den for ci, cv in positives)
            losses.append(-(t / tb) * mean / len(positives))
    return sum(losses) / len(losses) if losses else 0.0


def ref_margin(e, labels, m) -> float:
    e = e.detach().double().cpu().numpy()
    n = len(e)
    total = 0.0
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            d = float(np.linalg.norm(e[i] - e[j]))
            same = int(labels[i]) == int(labels[j])
            total += d * d if same else max(0.0, m - d) ** 2
    return total / (n * (n - 1))


def _randn(*shape, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


def _close(ours: torch.Tensor, ref: float, rtol: float) -> None:
    ours = ours.detach()
    assert torch.isfinite(ours)
    assert abs(float(ours) - ref) <= rtol * max(abs(ref), 1e-12), (float(ours), ref)


# ----------------------------------------------------------------------------- nt_xent
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n", [1, 2, 7])
@pytest.mark.parametrize("pos_den", [True, False])
@pytest.mark.parametrize("t", [0.5, 0.1])
def test_nt_xent_matches_loop(dtype, n, pos_den, t):
    z1, z2 = _randn(n, 5, dtype=dtype, seed=1), _randn(n, 5, dtype=dtype, seed=2)
    if n == 1 and not pos_den:
        with pytest.raises(ValueError, match="at least 2"):
            nt_xent(z1, z2, t, positive_in_denominator=False)
        return
    out = nt_xent(z1, z2, t, positive_in_denominator=pos_den)
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    _close(out, ref_nt_xent(z1, z2, t, pos_den), RTOL[dtype])


def test_nt_xent_batch_one_is_zero_with_positive_in_denominator():
    # one sample: each anchor's denominator holds only its positive, so l_i = 0 exactly
    z1, z2 = _randn(1, 4, seed=3), _randn(1, 4, seed=4)
    assert float(nt_xent(z1, z2)) == pytest.approx(0.0, abs=1e-12)


def ref_nt_xent_valid(z1, z2, t, positive_in_denominator, valid) -> float:
    """Explicit loop: invalid pairs are neither anchors nor columns."""
    z = np.concatenate([_unit(z1), _unit(z2)])
    n = len(z) // 2
    ok = [bool(valid[i % n]) for i in range(2 * n)]
    total, count = 0.0, 0
    for i in range(2 * n):
        if not ok[i]:
            continue
        p = (i + n) % (2 * n)
        den = sum(
            math.exp(float(z[i] @ z[k]) / t)
            for k in range(2 * n)
            if ok[k] and k != i and (positive_in_denominator or k != p)
        )
        total += -float(z[i] @ z[p]) / t + math.log(den)
        count += 1
    return total / count


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("pos_den", [True, False])
@pytest.mark.parametrize(
    "mask", [[1, 0, 1, 1, 0, 1, 1], [1, 1, 1, 1, 1, 1, 1], [0, 0, 1, 0, 0, 0, 1]]
)
def test_nt_xent_valid_mask_matches_loop(dtype, pos_den, mask):
    z1 = _randn(7, 5, dtype=dtype, seed=11).requires_grad_(True)
    z2 = _randn(7, 5, dtype=dtype, seed=12).requires_grad_(True)
    valid = torch.tensor(mask, dtype=torch.bool)
    out = nt_xent(z1, z2, 0.5, pos_den, valid=valid)
    _close(out, ref_nt_xent_valid(z1, z2, 0.5, pos_den, mask), RTOL[dtype])
    out.backward()
    # invalid pairs get exactly no gradient, valid ones get some
    assert torch.all(z1.grad[~valid] == 0) and torch.all(z2.grad[~valid] == 0)
    assert torch.all(z1.grad[valid].abs().sum(1) > 0)


@pytest.mark.parametrize("pos_den", [True, False])
@pytest.mark.parametrize("mask", [[0, 0, 0], [0, 1, 0]])
def test_nt_xent_valid_mask_without_usable_pairs_is_zero_with_finite_grad(pos_den, mask):
    z1 = _randn(3, 4, seed=13).requires_grad_(True)
    z2 = _randn(3, 4, seed=14)
    out = nt_xent(z1, z2, 0.5, pos_den, valid=torch.tensor(mask, dtype=torch.bool))
    out.backward()
    assert out.item() == 0.0
    assert torch.isfinite(z1.grad).all()


# ----------------------------------------------------------------------------- info_nce
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n", [1, 2, 6])
@pytest.mark.parametrize("n_neg", [0, 5])
def test_info_nce_matches_loop(dtype, n, n_neg):
    q, k = _randn(n, 6, dtype=dtype, seed=5), _randn(n, 6, dtype=dtype, seed=6)
    neg = _randn(n_neg, 6, dtype=dtype, seed=7) if n_neg else None
    out = info_nce(q, k, 0.2, negatives=neg)
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    if n == 1 and not n_neg:
        assert float(out) == pytest.approx(0.0, abs=1e-12)  # the positive is the only column
    else:
        _close(out, ref_info_nce(q, k, 0.2, neg), RTOL[dtype])


# ----------------------------------------------------------------------------- sup_con
LABELS = {
    "none": None,
    "grouped": [0, 1, 0, 2, 1, 0],
    "some_without_positive": [0, 1, 0, 2, 3, 0],  # with V=1, labels 1, 2, 3 have no positive
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("labels", list(LABELS))
@pytest.mark.parametrize("v", [1, 2, 3])
@pytest.mark.parametrize("mode", ["all", "one"])
def test_sup_con_matches_loop(dtype, labels, v, mode):
    f = _randn(6, v, 5, dtype=dtype, seed=8)
    lab = None if LABELS[labels] is None else torch.tensor(LABELS[labels])
    out = sup_con(f, lab, temperature=0.1, base_temperature=0.07, contrast_mode=mode)
    ref = ref_sup_con(f, lab, 0.1, 0.07, mode)
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    if ref == 0.0:  # labels=None with V=1: nobody has a positive
        assert float(out) == 0.0
    else:
        _close(out, ref, RTOL[dtype])


@pytest.mark.parametrize("b", [1, 2])
def test_sup_con_small_batches(b):
    f = _randn(b, 2, 4, seed=9)
    for lab in (None, torch.zeros(b, dtype=torch.long)):
        _close(sup_con(f, lab, 0.5, 0.5), ref_sup_con(f, lab, 0.5, 0.5), 1e-6)


def test_sup_con_some_anchors_without_positive_finite_and_grad_flows():
    f = _randn(6, 1, 5, seed=10).requires_grad_(True)
    lab = torch.tensor(LABELS["some_without_positive"])
    out = sup_con(f, lab, 0.1, 0.1)
    _close(out, ref_sup_con(f, lab, 0.1, 0.1), 1e-6)
    out.backward()
    assert torch.isfinite(f.grad).all()
    # anchors with label 0 are the only contributors, but every sample is a negative for them
    assert (f.grad.abs().sum(-1) > 0).all()


def test_sup_con_no_anchor_has_positive_is_zero_with_grad():
    f = _randn(4, 1, 5, seed=11).requires_grad_(True)
    out = sup_con(f, torch.arange(4))
    assert float(out.detach()) == 0.0 and out.requires_grad
    out.backward()
    assert f.grad is not None and torch.isfinite(f.grad).all() and float(f.grad.abs().sum()) == 0.0


def test_sup_con_single_column_is_zero_with_finite_grad():
    # one sample, one view: the only column is the anchor itself, so its softmax row is empty
    f = _randn(1, 1, 4, seed=25).requires_grad_(True)
    out = sup_con(f, None)
    out.backward()
    assert float(out.detach()) == 0.0 and torch.isfinite(f.grad).all()


def test_sup_con_gradcheck_with_missing_positives():
    f = _randn(5, 2, 3, seed=12).requires_grad_(True)
    lab = torch.tensor([0, 0, 1, 2, 2])
    assert torch.autograd.gradcheck(lambda x: sup_con(x, lab, 0.3, 0.3, "one"), (f,))


# ----------------------------------------------------------------------------- margin
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n", [2, 7])
def test_margin_contrastive_matches_loop(dtype, n):
    e = _randn(n, 3, dtype=dtype, seed=13) * 0.6
    lab = torch.tensor([0, 1, 0, 1, 2, 2, 0][:n])
    out = margin_contrastive(e, lab, margin=1.5)
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    _close(out, ref_margin(e, lab, 1.5), RTOL[dtype])


def test_margin_contrastive_coincident_points_have_finite_grad():
    e = torch.zeros(3, 4, dtype=torch.float64, requires_grad=True)
    out = margin_contrastive(e, torch.tensor([0, 1, 0]), margin=1.0)
    assert float(out.detach()) == pytest.approx(
        4 / 6
    )  # 4 of the 6 ordered pairs differ: relu(1 - 0)^2 each
    out.backward()
    assert torch.isfinite(e.grad).all()


# ----------------------------------------------------------------------------- gradients
def test_gradcheck_nt_xent_and_info_nce():
    z1, z2 = _randn(3, 4, seed=14).requires_grad_(True), _randn(3, 4, seed=15).requires_grad_(True)
    neg = _randn(2, 4, seed=16)
    assert torch.autograd.gradcheck(lambda a, b: nt_xent(a, b, 0.3), (z1, z2))
    assert torch.autograd.gradcheck(lambda a, b: nt_xent(a, b, 0.3, False), (z1, z2))
    assert torch.autograd.gradcheck(lambda a, b: info_nce(a, b, 0.3, negatives=neg), (z1, z2))
    lab = torch.tensor([0, 1, 0])
    assert torch.autograd.gradcheck(lambda a: margin_contrastive(a, lab, 3.0), (z1,))


# ----------------------------------------------------------------------------- properties
@pytest.mark.parametrize("t", [0.5, 0.1])
def test_identical_antipodal_views_reach_the_lower_bound(t):
    """With 2 samples, identical views (positive similarity 1) and the samples antipodal (negative
    similarity -1) every term reaches its infimum: this is the global minimum of each loss."""
    e = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    z = torch.cat([e, -e])
    # nt_xent: 2N-1 = 3 columns: positive at 1/t, two negatives at -1/t
    assert float(nt_xent(z, z.clone(), t)) == pytest.approx(math.log(1 + 2 * math.exp(-2 / t)))
    assert float(nt_xent(z, z.clone(), t, False)) == pytest.approx(-2 / t + math.log(2))
    assert float(info_nce(z, z.clone(), t)) == pytest.approx(math.log(1 + math.exp(-2 / t)))
    f = torch.stack([z, z], dim=1)  # (2, 2, 3)
    assert float(sup_con(f, None, t, t)) == pytest.approx(math.log(1 + 2 * math.exp(-2 / t)))
    # and any perturbation of the second view increases the loss
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        z2 = z + 0.3 * torch.randn(z.shape, generator=g, dtype=torch.float64)
        assert float(nt_xent(z, z2, t)) > float(nt_xent(z, z.clone(), t))
        assert float(info_nce(z, z2, t)) > float(info_nce(z, z.clone(), t))


@pytest.mark.parametrize("seed", range(5))
def test_identical_views_minimise_info_nce_against_fixed_negatives(seed):
    """One query against fixed negatives: the loss falls strictly as s(q, k) grows, so k = q (s = 1)
    is the minimum over every key."""
    q, neg = _randn(1, 8, seed=seed), _randn(6, 8, seed=seed + 100)
    best = float(info_nce(q, q.clone(), 0.2, negatives=neg))
    for other in range(3):
        k = q + 0.5 * _randn(1, 8, seed=seed * 10 + other + 200)
        assert best < float(info_nce(q, k, 0.2, negatives=neg))


# ----------------------------------------------------------------------------- autocast
def test_losses_compute_in_float32_under_cpu_autocast():
    lin = torch.nn.Linear(32, 32).double()
    x = _randn(16, 32, seed=18)
    with torch.no_grad():
        a, b = lin(x).float(), lin(x.flip(0)).float()
    f = torch.stack([a, b], 1)
    lab = torch.arange(16) % 4
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outs = {
            "nt_xent": nt_xent(a, b, 0.1),
            "info_nce": info_nce(a, b, 0.1, negatives=b.flip(0)),
            "sup_con": sup_con(f, lab, 0.1, 0.1),
            "margin": margin_contrastive(a, lab, 1.0),
        }
        # sanity: autocast really is on, a plain matmul here would be bfloat16
        assert (a @ b.T).dtype == torch.bfloat16
    refs = {
        "nt_xent": ref_nt_xent(a, b, 0.1),
        "info_nce": ref_info_nce(a, b, 0.1, b.flip(0)),
        "sup_con": ref_sup_con(f, lab, 0.1, 0.1),
        "margin": ref_margin(a, lab, 1.0),
    }
    for name, out in outs.items():
        assert out.dtype == torch.float32, name
        _close(out, refs[name], 1e-5)


def test_bfloat16_activations_from_autocast_give_float32_loss_with_grad():
    lin = torch.nn.Linear(8, 8)
    x = _randn(4, 8, dtype=torch.float32, seed=19)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z1, z2 = lin(x), lin(x + 0.1)
        assert z1.dtype == torch.bfloat16
        loss = nt_xent(z1, z2, 0.5)
    assert loss.dtype == torch.float32
    _close(loss, ref_nt_xent(z1, z2, 0.5), 1e-5)
    loss.backward()
    assert torch.isfinite(lin.weight.grad).all() and lin.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- peers
def test_nt_xent_agrees_with_lightly():
    lightly_loss = pytest.importorskip("lightly.loss")
    z1, z2 = (
        _randn(12, 16, dtype=torch.float32, seed=20),
        _randn(12, 16, dtype=torch.float32, seed=21),
    )
    for t in (0.5, 0.1):
        peer = lightly_loss.NTXentLoss(temperature=t)(z1, z2)
        torch.testing.assert_close(nt_xent(z1, z2, t), peer, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("labels", ["grouped", "some_without_positive"])
@pytest.mark.parametrize("v", [1, 2])
def test_sup_con_agrees_with_pytorch_metric_learning(labels, v):
    pml = pytest.importorskip("pytorch_metric_learning.losses")
    f = _randn(6, v, 16, dtype=torch.float32, seed=22)
    lab = torch.tensor(LABELS[labels])
    # pml takes (N, D) embeddings with one label each and no base-temperature factor
    peer = pml.SupConLoss(temperature=0.1)(f.transpose(0, 1).reshape(-1, 16), lab.repeat(v))
    torch.testing.assert_close(sup_con(f, lab, 0.1, 0.1), peer, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- modules and errors
def test_module_wrappers_equal_functions():
    z1, z2 = _randn(5, 8, seed=23), _randn(5, 8, seed=24)
    f, lab = torch.stack([z1, z2], 1), torch.tensor([0, 1, 0, 1, 2])
    assert NTXentLoss(0.3, False)(z1, z2) == nt_xent(z1, z2, 0.3, False)
    assert InfoNCELoss(0.3)(z1, z2, z2.flip(0)) == info_nce(z1, z2, 0.3, z2.flip(0))
    assert SupConLoss(0.2, 0.1, "one")(f, lab) == sup_con(f, lab, 0.2, 0.1, "one")
    assert MarginContrastiveLoss(0.7)(z1, lab) == margin_contrastive(z1, lab, 0.7)


@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda: nt_xent(torch.randn(4), torch.randn(4)),
            r"z1 must have shape \(N, D\), got \(4,\)",
        ),
        (lambda: nt_xent(torch.randn(4, 3), torch.randn(5, 3)), r"\(4, 3\) and \(5, 3\)"),
        (lambda: info_nce(torch.randn(4, 3), torch.randn(4, 2)), r"\(4, 3\) and \(4, 2\)"),
        (
            lambda: info_nce(torch.randn(4, 3), torch.randn(4, 3), negatives=torch.randn(2, 5)),
            r"\(M, 3\)",
        ),
        (
            lambda: info_nce(torch.randn(4, 3), torch.randn(4, 3), negatives=torch.randn(5)),
            "negatives",
        ),
        (lambda: sup_con(torch.randn(4, 3)), r"\(B, V, D\), got \(4, 3\)"),
        (lambda: sup_con(torch.randn(4, 2, 3), torch.arange(5)), r"\(4,\).*\(5,\)"),
        (lambda: sup_con(torch.randn(4, 2, 3), contrast_mode="any"), "contrast_mode"),
        (lambda: margin_contrastive(torch.randn(4, 3), torch.arange(3)), r"\(4,\)"),
        (lambda: margin_contrastive(torch.randn(1, 3), torch.arange(1)), "at least 2"),
    ],
)
def test_bad_shapes_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()
