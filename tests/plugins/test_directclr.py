"""DirectCLR: loss against an explicit float64 loop, gradient routing, modes, lightly parity,
the paper's toy simulations (fixed seeds) and a demo run."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from plugins.methods.directclr import (
    DirectCLR,
    DirectCLRConfig,
    default_d0,
    directclr_loss,
    zero_init_residual,
)
from plugins.methods.directclr.toy import (
    alignment_diagonality,
    euclidean_info_nce,
    implicit_regularization_toy,
    strong_augmentation_toy,
)
from plugins.methods.directclr.train import LARS, AsymmetricAugment, lr_at, solarize


@pytest.fixture(autouse=True)
def _one_thread():
    # one intra-op thread is much faster than two on the shared CI CPU for these tiny shapes
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _reference_loss(z1: torch.Tensor, z2: torch.Tensor, t: float) -> float:
    """(InfoNCE(z1, z2) + InfoNCE(z2, z1)) / 2 with cross-view negatives, as an explicit loop."""
    n = len(z1)

    def unit(v):
        return v / math.sqrt(sum(float(c) ** 2 for c in v))

    a = [unit(v) for v in z1.double()]
    b = [unit(v) for v in z2.double()]

    def one_way(q, k):
        total = 0.0
        for i in range(n):
            sims = [float(q[i] @ k[j]) / t for j in range(n)]
            total += -sims[i] + math.log(sum(math.exp(s) for s in sims))
        return total / n

    return (one_way(a, b) + one_way(b, a)) / 2


class _Identity(nn.Module):
    """A backbone-free "representation": the input itself (N, D)."""

    def __init__(self, d: int):
        super().__init__()
        self.out_dim = d

    def forward(self, x):
        return x


@pytest.mark.parametrize("n,d,d0", [(1, 5, 5), (2, 6, 3), (7, 12, 4)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_loss_equals_explicit_formula(n, d, d0, dtype):
    g = torch.Generator().manual_seed(n * 100 + d)
    r1, r2 = (
        torch.randn(n, d, generator=g, dtype=dtype),
        torch.randn(n, d, generator=g, dtype=dtype),
    )
    model = DirectCLR(_Identity(d), d0=d0, mode="directclr")
    got = model(r1, r2)["contrastive_loss"]
    ref = _reference_loss(r1[:, :d0], r2[:, :d0], 0.1)
    assert float(got) == pytest.approx(ref, rel=1e-10 if dtype == torch.float64 else 1e-5, abs=1e-6)


def test_gradient_reaches_only_first_d0_dims():
    """With a backbone-free linear map r = x W^T, dL/dr is zero beyond d0; W's rows beyond d0 get no
    gradient (they would only through a shared backbone)."""
    torch.manual_seed(0)
    d, d0 = 10, 4
    r1 = torch.randn(6, d, dtype=torch.float64, requires_grad=True)
    r2 = torch.randn(6, d, dtype=torch.float64, requires_grad=True)
    model = DirectCLR(_Identity(d), d0=d0)
    model(r1, r2)["loss"].backward()
    for r in (r1, r2):
        assert r.grad[:, d0:].abs().max() == 0
        assert r.grad[:, :d0].abs().min() > 0
    lin = nn.Linear(8, d, bias=False)
    model = DirectCLR(lin, d0=d0, feat_dim=d, zero_init=False)
    model(torch.randn(6, 8), torch.randn(6, 8))["loss"].backward()
    assert lin.weight.grad[d0:].abs().max() == 0
    assert lin.weight.grad[:d0].abs().sum(1).min() > 0


def test_baseline_equals_full_width_directclr():
    g = torch.Generator().manual_seed(3)
    r1, r2 = torch.randn(9, 16, generator=g), torch.randn(9, 16, generator=g)
    base = DirectCLR(_Identity(16), mode="baseline")(r1, r2)["loss"]
    full = DirectCLR(_Identity(16), d0=16, mode="directclr")(r1, r2)["loss"]
    assert float(base) == pytest.approx(float(full), rel=1e-7)


def test_projector_modes_shapes_and_parameters():
    torch.manual_seed(0)
    r = torch.randn(8, 32)
    simclr = DirectCLR(_Identity(32), mode="simclr")
    linear = DirectCLR(_Identity(32), mode="linear")
    assert simclr.project(r).shape == (8, 128)
    assert linear.project(r).shape == (8, 32) and linear.projector.bias is None
    assert DirectCLR(_Identity(32)).d0 == default_d0(32) == 6
    assert default_d0(2048) == 360 and default_d0(512) == 90
    with pytest.raises(ValueError, match="mode"):
        DirectCLR(_Identity(4), mode="byol")
    with pytest.raises(ValueError, match="d0"):
        DirectCLR(_Identity(4), d0=5)


def test_online_classifier_does_not_reach_encoder():
    torch.manual_seed(0)
    lin = nn.Linear(8, 16, bias=False)
    model = DirectCLR(lin, d0=4, feat_dim=16, num_classes=3, zero_init=False)
    x1, x2, y = torch.randn(6, 8), torch.randn(6, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    out = model(x1, x2, y)
    out["classifier_loss"].backward()
    assert lin.weight.grad is None or lin.weight.grad.abs().max() == 0
    assert model.classifier.weight.grad.abs().max() > 0
    total = out["contrastive_loss"] + out["classifier_loss"]
    assert float(out["loss"].detach()) == pytest.approx(float(total.detach()))


def test_agrees_with_lightly_where_definitions_coincide():
    """lightly's DirectCLRLoss = NT-Xent (same-view negatives too) on the first d0 dims. Our
    ``negatives="all"`` equals it; our default cross-view form differs (fewer negatives)."""
    lightly_loss = pytest.importorskip("lightly.loss")
    g = torch.Generator().manual_seed(0)
    r1, r2 = torch.randn(12, 40, generator=g), torch.randn(12, 40, generator=g)
    for t in (0.1, 0.5):
        theirs = lightly_loss.DirectCLRLoss(loss_dim=7, temperature=t)(r1, r2)
        ours_all = DirectCLR(
            _Identity(40), d0=7, config=DirectCLRConfig(temperature=t, negatives="all")
        )(r1, r2)
        ours = DirectCLR(_Identity(40), d0=7, config=DirectCLRConfig(temperature=t))(r1, r2)
        assert float(ours_all["loss"]) == pytest.approx(float(theirs), rel=1e-5)
        assert float(ours["loss"]) < float(theirs)  # fewer negatives in the denominator
    assert float(directclr_loss(r1[:1, :7], r2[:1, :7])) == 0.0  # one pair: no negatives, loss 0


def test_zero_init_residual_on_torchvision_and_tiny_resnet():
    torchvision = pytest.importorskip("torchvision")
    from plugins.methods.simclr import TinyResNet

    net = zero_init_residual(torchvision.models.resnet18(weights=None))
    assert all(
        float(b.bn2.weight.detach().abs().sum()) == 0 for b in net.modules() if hasattr(b, "conv2")
    )
    tiny = DirectCLR(TinyResNet(3, widths=(8, 16)), mode="directclr").backbone
    assert all(
        float(b.bn2.weight.detach().abs().sum()) == 0 for b in tiny.modules() if hasattr(b, "bn2")
    )
    assert float(tiny.stem[1].weight.detach().abs().sum()) > 0  # stem BN untouched


def test_lars_schedule_and_augment():
    assert lr_at(0, 100, 1.0, 0.1) == pytest.approx(0.1)
    assert lr_at(9, 100, 1.0, 0.1) == pytest.approx(1.0)
    assert lr_at(99, 100, 1.0, 0.1) < 0.01
    w = nn.Parameter(torch.ones(3, 3))
    b = nn.Parameter(torch.ones(3))
    opt = LARS([w, b], lr=1.0, weight_decay=0.0, momentum=0.0, eta=0.001)
    w.grad, b.grad = torch.full((3, 3), 5.0), torch.full((3,), 5.0)
    opt.step()
    # weights: step size eta * ||w|| / ||g|| * g  -> each entry moves by 0.001; biases: plain SGD
    assert torch.allclose(w, torch.full((3, 3), 0.999))
    assert torch.allclose(b, torch.full((3,), -4.0))
    x = torch.linspace(0, 1, 11).reshape(1, 1, 1, 11).repeat(4, 3, 1, 1)
    s = solarize(x, p=1.0)
    assert torch.allclose(s[..., :5], x[..., :5]) and torch.allclose(s[..., 5:], 1 - x[..., 5:])
    v1, v2 = AsymmetricAugment(8)(torch.rand(5, 3, 8, 8))
    assert v1.shape == v2.shape == (5, 3, 8, 8) and 0 <= float(v1.min()) and float(v2.max()) <= 1


# -- the paper's linear simulations (fixed seeds) -----------------------------------------------
def test_toy1_strong_augmentation_collapses_the_noisy_dims():
    strong = strong_augmentation_toy(2.0, seed=0)
    weak = strong_augmentation_toy(0.1, seed=0)
    assert strong.collapsed(1e-7) == 8  # exactly the 8 dims whose noise exceeds the data
    assert weak.collapsed(1e-3) == 0  # control: weak noise, no collapse
    w = strong.weights[0]
    assert float(w[:, 8:].norm() / w[:, :8].norm()) < 0.05  # the noisy inputs are switched off
    assert strong.tracker.history[-1]["nonzero_eigenvalues"] == 8


def test_toy2_two_layers_collapse_with_weak_noise_and_align():
    deep = implicit_regularization_toy(2, seed=0)
    shallow = implicit_regularization_toy(1, seed=0, init_scale=1.0)
    init = implicit_regularization_toy(2, seed=0, steps=0)
    assert deep.collapsed(1e-7) >= 4 and shallow.collapsed(1e-7) == 0
    assert deep.collapsed(1e-3) >= shallow.collapsed(1e-3) + 6
    assert alignment_diagonality(*init.weights) < 0.2
    assert alignment_diagonality(*deep.weights) > 0.95


def test_euclidean_info_nce_against_loop():
    g = torch.Generator().manual_seed(0)
    a, b = (
        torch.randn(4, 3, generator=g, dtype=torch.float64),
        torch.randn(4, 3, generator=g, dtype=torch.float64),
    )
    ref = 0.0
    for i in range(4):
        logits = [-float((a[i] - b[j]).pow(2).sum()) / 2 for j in range(4)]
        ref += -logits[i] + math.log(sum(math.exp(v) for v in logits))
    assert float(euclidean_info_nce(a, b)) == pytest.approx(ref / 4, rel=1e-5)


# -- the command ----------------------------------------------------------------------------------
def test_demo_run_writes_run_dir(tmp_path):
    from plugins.methods.directclr.run import run
    from plugins.reporting import RunContext, RunDir

    ctx = RunContext("directclr", RunDir(path=tmp_path), epochs=1, device=torch.device("cpu"), demo=True, progress=False,
                     options={"widths": [8, 16], "map_points": 60, "monitor_every": 2})  # fmt: skip
    metrics = run(ctx)
    names = {p.name for p in tmp_path.iterdir()}
    assert {
        "metrics.json",
        "config.yaml",
        "checkpoint_directclr.pt",
        "spectrum.png",
        "embedding.png",
    } <= names
    assert {
        "collapse_spectrum_representation.png",
        "collapse_curves_embedding.png",
        "loss_directclr.png",
    } <= names
    assert 0.1 < metrics["knn_acc"] <= 1 and metrics["dim"] == 16 and metrics["d0"] == 3
