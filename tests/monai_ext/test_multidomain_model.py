"""MultiDomainUNet, the multi-domain loss and the balanced sampler."""

from __future__ import annotations

import copy
from collections import Counter

import pytest
import torch

from monai_ext.dsbn import DomainSpecificBatchNorm
from monai_ext.multidomain.loss import MultiDomainLoss, domain_regulariser
from monai_ext.multidomain.model import MultiDomainUNet
from monai_ext.multidomain.sampler import DomainBalancedBatchSampler
from plugins.errors import UserInputError

pytestmark = pytest.mark.usefixtures("one_thread")


FEAT = (4, 4, 8, 8, 16, 4)


def _net(**kw) -> MultiDomainUNet:
    torch.manual_seed(0)
    return MultiDomainUNet(2, 1, [3, 5], features=FEAT, embedding_dim=8, embedding_hidden=16, **kw)


def test_shapes_and_single_domain_forward() -> None:
    net = _net()
    x = torch.randn(4, 1, 32, 32)
    assert net(x, 0).shape == (4, 3, 32, 32)
    assert net(x, 1).shape == (4, 5, 32, 32)
    assert net(x).shape == (4, 3, 32, 32)  # default domain
    logits, emb = net.forward_multi(x, torch.tensor([0, 1, 1, 0]))
    assert logits[0].shape == (2, 3, 32, 32) and logits[1].shape == (2, 5, 32, 32)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(4))
    with pytest.raises(ValueError, match="one domain per batch"):
        net(x, torch.tensor([0, 1, 1, 0]))
    with pytest.raises(UserInputError, match="id 2 is out of range"):
        net(x, 2)


def test_3d_flag() -> None:
    torch.manual_seed(0)
    net = MultiDomainUNet(
        3, 1, [2, 3], features=(2, 2, 4, 4, 8, 2), embedding_dim=4, embedding_hidden=8
    )
    assert net(torch.randn(2, 1, 16, 16, 16), 1).shape == (2, 3, 16, 16, 16)
    assert any(
        isinstance(m, DomainSpecificBatchNorm) and m.spatial_dims == 3 for m in net.modules()
    )


def test_mixed_batch_equals_per_domain_forward() -> None:
    net = _net()
    ref = copy.deepcopy(net)
    x = torch.randn(6, 1, 32, 32)
    domain = torch.tensor([1, 0, 0, 1, 1, 0])
    logits, _ = net.forward_multi(x, domain)
    for d in (0, 1):
        idx = (domain == d).nonzero(as_tuple=True)[0]
        torch.testing.assert_close(logits[d], ref(x[idx], d), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k", [0, 1])
def test_gradients_reach_only_domain_k(k: int) -> None:
    net = _net()
    x = torch.randn(4, 1, 32, 32)
    net(x, k).square().mean().backward()
    for d, head in enumerate(net.heads):
        assert (head.weight.grad is not None and head.weight.grad.abs().sum() > 0) == (d == k)
    for m in net.modules():
        if isinstance(m, DomainSpecificBatchNorm):
            for d, bn in enumerate(m.bns):
                assert (bn.weight.grad is not None and bn.weight.grad.abs().sum() > 0) == (d == k)
    conv = net.backbone.conv_0.conv_0.conv
    assert conv.weight.grad.abs().sum() > 0


def test_mixed_batch_loss_of_one_domain_leaves_other_domain_params() -> None:
    net = _net()
    x = torch.randn(4, 1, 32, 32)
    logits, _ = net.forward_multi(x, torch.tensor([0, 1, 0, 1]))
    logits[1].square().mean().backward()
    assert net.heads[0].weight.grad is None
    bn = net.backbone.conv_0.conv_0.adn.N
    # slot 0 took part in the forward, so it holds a gradient, but an exactly zero one
    assert bn.bns[0].weight.grad.abs().sum() == 0 and bn.bns[1].weight.grad.abs().sum() > 0
    # shared convs get gradients from both domains
    net.zero_grad()
    logits, _ = net.forward_multi(x, torch.tensor([0, 1, 0, 1]))
    logits[0].square().mean().backward()
    g0 = net.backbone.conv_0.conv_0.conv.weight.grad.clone()
    assert g0.abs().sum() > 0


def test_shared_bn_shared_head_baseline() -> None:
    net = _net(shared_bn=True, shared_head=True)
    assert not any(isinstance(m, DomainSpecificBatchNorm) for m in net.modules())
    assert net.union_classes == 1 + 2 + 4
    x = torch.randn(2, 1, 32, 32)
    assert net(x, 1).shape == (2, 5, 32, 32)
    logits, _ = net.forward_multi(x, torch.tensor([0, 1]), union=True)
    assert logits[1].shape == (1, 7, 32, 32)
    label = torch.tensor([0, 1, 2, 3, 4])
    assert net.to_union_labels(label, 1).tolist() == [0, 3, 4, 5, 6]
    assert net.to_union_labels(label[:3], 0).tolist() == [0, 1, 2]


def test_regularisers_against_loops() -> None:
    torch.manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(6, 4, dtype=torch.float64), dim=1)
    dom = torch.tensor([0, 1, 0, 1, 1, 0])
    t = 0.1
    total, count = 0.0, 0
    for i in range(6):
        denom = sum(torch.exp(z[i] @ z[a] / t) for a in range(6) if a != i)
        pos = [p for p in range(6) if p != i and dom[p] == dom[i]]
        total += -sum(z[i] @ z[p] / t - torch.log(denom) for p in pos) / len(pos)
        count += 1
    torch.testing.assert_close(domain_regulariser(z, dom, "supcon", t), total / count)
    m = 1.0
    acc = 0.0
    for i in range(6):
        for j in range(6):
            if i != j:
                dist = (z[i] - z[j]).norm()
                acc += dist**2 if dom[i] == dom[j] else torch.clamp(m - dist, min=0) ** 2
    torch.testing.assert_close(domain_regulariser(z, dom, "margin", margin=m), acc / 30)
    # well separated domains give a lower regulariser than mixed ones
    sep = torch.tensor([[1.0, 0.0]] * 3 + [[-1.0, 0.0]] * 3)
    mix = torch.tensor([[1.0, 0.0], [-1.0, 0.0]] * 3)
    d = torch.tensor([0, 0, 0, 1, 1, 1])
    for kind in ("supcon", "margin"):
        assert domain_regulariser(sep, d, kind) < domain_regulariser(mix, d, kind)


def test_multidomain_loss_and_errors() -> None:
    net = _net()
    x = torch.randn(4, 1, 32, 32)
    dom = torch.tensor([0, 1, 0, 1])
    label = torch.randint(0, 3, (4, 1, 32, 32))
    logits, emb = net.forward_multi(x, dom)
    loss_fn = MultiDomainLoss([3, 5], "supcon", lam=0.1)
    total, parts = loss_fn(logits, label, dom, emb)
    assert total.requires_grad
    torch.testing.assert_close(
        total.item(), parts["seg_0"] + parts["seg_1"] + 0.1 * parts["con"], rtol=1e-5, atol=1e-6
    )
    bad = label.clone()
    bad[0, 0, 0, 0] = 4  # domain 0 has 3 classes
    with pytest.raises(UserInputError, match="label value 4 is outside domain 0"):
        loss_fn(logits, bad, dom, emb)
    logits0, emb0 = net.forward_multi(x, torch.zeros(4, dtype=torch.long))
    with pytest.raises(UserInputError, match="lacks domain id 1"):
        loss_fn(logits0, label, torch.zeros(4, dtype=torch.long), emb0)


def test_balanced_sampler() -> None:
    domains = [0] * 10 + [1] * 3 + [2] * 7
    sampler = DomainBalancedBatchSampler(domains, samples_per_domain=2, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 5
    for b in batches:
        assert Counter(domains[i] for i in b) == {0: 2, 1: 2, 2: 2}
    seen0 = {i for b in batches for i in b if domains[i] == 0}
    assert seen0 == set(range(10))  # the largest domain is covered once per epoch
    assert list(DomainBalancedBatchSampler(domains, 2, seed=1)) == batches
    ranks = [
        list(DomainBalancedBatchSampler(domains, 2, seed=1, rank=r, world_size=2)) for r in (0, 1)
    ]
    assert sorted(map(tuple, ranks[0] + ranks[1])) == sorted(map(tuple, batches))
    with pytest.raises(UserInputError, match="domain id 1 has no items"):
        DomainBalancedBatchSampler([0, 2, 2], 1)
    with pytest.raises(UserInputError, match="domain id 3 is out of range"):
        DomainBalancedBatchSampler([0, 1, 3], 1, num_domains=2)


@pytest.mark.parametrize("shared_bn", [False, True])
def test_adapt_bn_statistics_re_estimates_only_the_domains_statistics(shared_bn: bool) -> None:
    from monai_ext.multidomain.train import adapt_bn_statistics

    net = _net(shared_bn=shared_bn)
    torch.manual_seed(3)
    x = torch.randn(8, 1, 32, 32)
    net.train()
    with torch.no_grad():  # fill every slot's statistics with something other than the defaults
        net.forward_multi(x, torch.tensor([0, 1] * 4))
    before = copy.deepcopy(net.state_dict())
    target = 3 * torch.rand(6, 1, 32, 32) + 1  # the "test slices" of domain 1: other statistics
    adapted = adapt_bn_statistics(net, target, 1, torch.device("cpu"), batch=6)
    # the original is untouched and every learned weight is copied as it was
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, before[k])
    for (k, v), (k2, v2) in zip(net.named_parameters(), adapted.named_parameters(), strict=True):
        assert k == k2
        torch.testing.assert_close(v, v2)
    first = adapted.backbone.conv_0.conv_0
    bn = first.adn.N if shared_bn else first.adn.N.bns[1]
    with torch.no_grad():
        h = first.conv(target)  # the first BN's input on the target images
    # one batch: exactly the target's mean and unbiased variance, as AdaBN prescribes
    torch.testing.assert_close(bn.running_mean, h.mean((0, 2, 3)))
    torch.testing.assert_close(bn.running_var, h.var((0, 2, 3), unbiased=True))
    if not shared_bn:  # domain 0's slot keeps its training statistics
        slot0 = "backbone.conv_0.conv_0.adn.N.bns.0.running_mean"
        torch.testing.assert_close(adapted.state_dict()[slot0], before[slot0])
    assert not adapted.training
