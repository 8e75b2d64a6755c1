"""Projection head layout, EMA update formula and the FIFO feature queue."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from plugins.heads import FeatureQueue, ProjectionHead, momentum_copy, momentum_update


def _kinds(head: ProjectionHead) -> list[str]:
    return [type(m).__name__ for m in head.net]


def test_projection_head_simclr_layout_and_shapes():
    head = ProjectionHead(32, 64, 16)
    assert _kinds(head) == ["Linear", "ReLU", "Linear"]
    assert [(m.in_features, m.out_features) for m in head.net if isinstance(m, nn.Linear)] == [
        (32, 64),
        (64, 16),
    ]
    assert all(m.bias is not None for m in head.net if isinstance(m, nn.Linear))
    assert head(torch.randn(5, 32)).shape == (5, 16)


def test_projection_head_batch_norm_and_depth():
    head = ProjectionHead(8, 12, 4, num_layers=3, batch_norm=True, last_batch_norm=True)
    assert _kinds(head) == [
        "Linear",
        "BatchNorm1d",
        "ReLU",
        "Linear",
        "BatchNorm1d",
        "ReLU",
        "Linear",
        "BatchNorm1d",
    ]
    linears = [m for m in head.net if isinstance(m, nn.Linear)]
    # a bias right before a BatchNorm is redundant; the output layer keeps its own
    assert [m.bias is None for m in linears] == [True, True, False]
    assert not head.net[-1].affine
    out = head(torch.randn(6, 8))
    assert out.shape == (6, 4)
    torch.testing.assert_close(
        out.mean(0), torch.zeros(4), atol=1e-5, rtol=0
    )  # last BN in train mode


def test_projection_head_linear_and_invalid():
    assert _kinds(ProjectionHead(8, 99, 4, num_layers=1)) == ["Linear"]
    with pytest.raises(ValueError, match="num_layers"):
        ProjectionHead(8, 8, 4, num_layers=0)


def test_momentum_update_formula_and_buffers():
    torch.manual_seed(0)
    online = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    target = momentum_copy(online)
    assert all(not p.requires_grad for p in target.parameters())
    with torch.no_grad():
        for p in target.parameters():
            p.add_(torch.randn_like(p))
    online(torch.randn(8, 4))  # moves the online BatchNorm's running statistics
    before = [p.clone() for p in target.parameters()]
    momentum_update(online, target, 0.9)
    for t_new, t_old, o in zip(target.parameters(), before, online.parameters()):
        torch.testing.assert_close(t_new, 0.9 * t_old + 0.1 * o)
    for bt, bo in zip(target.buffers(), online.buffers()):
        assert torch.equal(bt, bo)
    momentum_update(online, target, 0.0)  # m = 0 copies the online network
    for t_new, o in zip(target.parameters(), online.parameters()):
        torch.testing.assert_close(t_new, o)


def test_feature_queue_fifo_wraparound():
    q = FeatureQueue(5, 3)
    assert q().shape == (5, 3) and int(q.filled) == 0
    keys = torch.arange(1, 25, dtype=torch.float32).reshape(8, 3)
    s1 = q.enqueue(keys[:3], torch.tensor([10, 11, 12]))
    assert s1.tolist() == [0, 1, 2] and int(q.ptr) == 3 and int(q.filled) == 3
    s2 = q.enqueue(keys[3:6])  # wraps: slots 3, 4, 0
    assert s2.tolist() == [3, 4, 0] and int(q.ptr) == 1 and int(q.filled) == 5
    unit = torch.nn.functional.normalize(keys, dim=1)
    expected = torch.stack([unit[5], unit[1], unit[2], unit[3], unit[4]])
    torch.testing.assert_close(q.features, expected)
    assert q.tags.tolist() == [-1, 11, 12, -1, -1]
    # more keys than slots: only the newest `size` survive, in FIFO order from ptr
    many = torch.randn(7, 3)
    slots = q.enqueue(many, torch.arange(7))
    assert slots.tolist() == [1, 2, 3, 4, 0]
    torch.testing.assert_close(q.features[slots], torch.nn.functional.normalize(many[-5:], dim=1))
    assert q.tags[slots].tolist() == [2, 3, 4, 5, 6]
    assert int(q.ptr) == 1


def test_feature_queue_state_dict_round_trip():
    q = FeatureQueue(4, 2)
    q.enqueue(torch.randn(3, 2))
    r = FeatureQueue(4, 2)
    r.load_state_dict(q.state_dict())
    assert torch.equal(r.features, q.features) and int(r.ptr) == 3
