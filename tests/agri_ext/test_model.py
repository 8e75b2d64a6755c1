import torch

from agri_ext import CLAWS
from agri_ext.config import CLAWSConfig
from agri_ext.model import StraightThroughGate

TINY = dict(widths=(4, 8, 8), projection_dim=6)


def test_straight_through_mask_is_binary_and_passes_gradient():
    torch.manual_seed(0)
    gate = StraightThroughGate(16)
    h = torch.randn(10, 16, requires_grad=True)
    m = gate.mask(h)
    assert set(m.detach().unique().tolist()) <= {0.0, 1.0}
    assert 0 < m.detach().mean() < 1
    out = gate(h)
    assert torch.equal(out.detach(), h.detach() * (out.detach() != 0))
    (out * torch.randn_like(out)).sum().backward()
    grads = [p.grad for p in gate.mlp.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    # plain rounding (no straight-through) passes zero gradient: why the estimator is needed
    plain = h * torch.round(torch.sigmoid(gate.mlp(h)))
    (g0,) = torch.autograd.grad(plain.sum(), gate.mlp[0].weight)
    assert torch.count_nonzero(g0) == 0


def test_within_class_modes_agree_on_class_homogeneous_batch():
    torch.manual_seed(0)
    by_mask = CLAWS(3, CLAWSConfig(within_class="mask", **TINY))
    by_batch = CLAWS(3, CLAWSConfig(within_class="batch", **TINY))
    by_batch.load_state_dict(by_mask.state_dict())
    x_i, x_c = torch.rand(6, 3, 8, 8), torch.rand(6, 3, 8, 8)
    y = torch.full((6,), 2)
    assert torch.allclose(by_mask(x_i, x_c, y), by_batch(x_i, x_c, y), atol=1e-6)
    # on a mixed batch they differ: "mask" drops other-class columns, "batch" would not
    y_mixed = torch.tensor([0, 0, 0, 1, 1, 1])
    assert not torch.allclose(by_mask(x_i, x_c, y_mixed), by_batch(x_i, x_c, y_mixed))


def test_variants_build_and_backpropagate():
    torch.manual_seed(0)
    x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 0, 1, 1])
    for kw in (
        dict(mask="pixel"),
        dict(mask="feature"),
        dict(contrast="all", mask="none", shared_encoder=True),
        dict(contrast="supcon", mask="none", shared_encoder=True),
    ):
        model = CLAWS(3, CLAWSConfig(**kw, **TINY))
        loss = model(x, x.flip(-1), y)
        loss.backward()
        assert torch.isfinite(loss)
        assert (model.encoder_i is model.encoder_c) == kw.get("shared_encoder", False)
        if kw.get("mask") == "feature":
            assert model.gate.mlp[0].weight.grad.abs().sum() > 0
