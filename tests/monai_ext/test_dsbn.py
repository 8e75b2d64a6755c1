"""Properties of domain-specific batch norm (Boutillon et al., MICCAI 2021, Sec. 2.1)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from monai_ext.dsbn import DomainRouter, DomainSpecificBatchNorm, convert_to_dsbn, domain_context
from plugins.errors import UserInputError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_single_domain_equals_batchnorm(dims: int) -> None:
    torch.manual_seed(0)
    bn = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims](4)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    dsbn = DomainSpecificBatchNorm.from_batchnorm(bn, 1)
    shape = (5, 4) + (6,) * dims
    for _ in range(3):
        x = torch.randn(shape) * 3 + 1
        assert torch.equal(dsbn(x, 0), bn(x))
    assert torch.equal(dsbn.bns[0].running_mean, bn.running_mean)
    assert torch.equal(dsbn.bns[0].running_var, bn.running_var)
    assert dsbn.bns[0].num_batches_tracked == bn.num_batches_tracked == 3
    dsbn.eval()
    bn.eval()
    x = torch.randn(shape)
    assert torch.equal(dsbn(x), bn(x))  # one domain: no id needed


def test_fresh_dsbn_single_domain_matches_fresh_batchnorm() -> None:
    torch.manual_seed(1)
    dsbn, bn = DomainSpecificBatchNorm(3, 1, 2), nn.BatchNorm2d(3)
    x = torch.randn(4, 3, 5, 5)
    assert torch.equal(dsbn(x, 0), bn(x))
    assert torch.equal(dsbn.bns[0].running_var, bn.running_var)


def test_forward_in_domain_k_updates_only_slot_k() -> None:
    torch.manual_seed(0)
    dsbn = DomainSpecificBatchNorm(3, 3, 2)
    before = copy.deepcopy(dsbn.state_dict())
    dsbn(torch.randn(4, 3, 5, 5) + 2.0, 1)
    after = dsbn.state_dict()
    for key, value in after.items():
        slot = int(key.split(".")[1])
        changed = not torch.equal(value, before[key])
        if key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert changed == (slot == 1), key
        else:
            assert not changed, key  # affine params move only with an optimiser step


def test_mixed_batch_equals_per_domain_passes() -> None:
    torch.manual_seed(0)
    mixed = DomainSpecificBatchNorm(3, 3, 2)
    with torch.no_grad():
        for bn in mixed.bns:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-1, 1)
    separate = copy.deepcopy(mixed)
    x = torch.randn(7, 3, 4, 4) * torch.arange(1, 8).view(7, 1, 1, 1)
    domain = torch.tensor([2, 0, 2, 1, 0, 0, 2])
    out = mixed(x, domain)
    for d in range(3):
        idx = (domain == d).nonzero(as_tuple=True)[0]
        torch.testing.assert_close(out[idx], separate(x[idx], d), rtol=0, atol=0)
    for a, b in zip(mixed.state_dict().values(), separate.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # a uniform id tensor is the same as the int
    mixed.eval()
    separate.eval()
    assert torch.equal(mixed(x, torch.full((7,), 1)), separate(x, 1))


def _bn_unet() -> nn.Module:
    from monai.networks.nets import BasicUNet

    return BasicUNet(2, 1, 3, features=(4, 4, 8, 8, 16, 4), norm=("batch", {"affine": True}))


def test_convert_to_dsbn_keeps_pretrained_outputs() -> None:
    torch.manual_seed(0)
    net = _bn_unet()
    net.train()
    for _ in range(2):  # "pretraining": non-trivial running statistics
        net(torch.randn(2, 1, 32, 32) * 2 + 1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    net.eval()
    x = torch.randn(3, 1, 32, 32)
    ref = net(x)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    converted = convert_to_dsbn(copy.deepcopy(net), 3)
    assert sum(isinstance(m, DomainSpecificBatchNorm) for m in converted.modules()) == n_bn > 0
    assert not any(
        isinstance(m, nn.BatchNorm2d) and not _inside_dsbn(converted, m)
        for m in converted.modules()
    )
    for d in range(3):
        with domain_context(converted, d):
            assert torch.equal(converted(x), ref)
        assert torch.equal(DomainRouter(converted)(x, d), ref)


def _inside_dsbn(model: nn.Module, bn: nn.Module) -> bool:
    return any(
        isinstance(m, DomainSpecificBatchNorm) and any(b is bn for b in m.bns)
        for m in model.modules()
    )


def test_converted_network_mixed_batch_and_context_reset() -> None:
    torch.manual_seed(0)
    net = convert_to_dsbn(_bn_unet(), 2)
    ref = copy.deepcopy(net)
    x = torch.randn(4, 1, 32, 32)
    domain = torch.tensor([0, 1, 1, 0])
    with domain_context(net, domain):
        out = net(x)
    for d in (0, 1):
        idx = (domain == d).nonzero(as_tuple=True)[0]
        with domain_context(ref, d):
            torch.testing.assert_close(out[idx], ref(x[idx]))
    with pytest.raises(RuntimeError, match="needs a domain"):
        net(x)  # the context restored "no domain"


def test_domain_out_of_range_is_a_clear_error() -> None:
    dsbn = DomainSpecificBatchNorm(2, 2, 2)
    with pytest.raises(UserInputError, match="id 5 is out of range"):
        dsbn(torch.randn(2, 2, 3, 3), 5)
    with pytest.raises(UserInputError, match="id -1"):
        dsbn(torch.randn(2, 2, 3, 3), torch.tensor([0, -1]))
