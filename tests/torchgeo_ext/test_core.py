"""GLCNet model, loss and correspondence sampler against explicit references."""

import math

import pytest
import torch
import torch.nn.functional as F

from torchgeo_ext.loss import glcnet_loss
from torchgeo_ext.model import GLCNetModel, style_vector
from torchgeo_ext.sampling import (
    GLCNetViews,
    match_windows,
    source_index_map,
    upsampled_window_mean,
    view_theta,
    warp,
    window_mean,
)


def test_style_vector_is_mean_and_unbiased_variance():
    torch.manual_seed(0)
    f = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    s = style_vector(f)
    for b in range(2):
        for c in range(3):
            vals = [float(v) for v in f[b, c].reshape(-1)]
            m = sum(vals) / len(vals)
            var = sum((v - m) ** 2 for v in vals) / (len(vals) - 1)
            assert s[b, c].item() == pytest.approx(m, abs=1e-12)
            assert s[b, 3 + c].item() == pytest.approx(var, abs=1e-12)
    assert style_vector(f, use_variance=False).shape == (2, 3)


def _nt_xent_loop(z1, z2, t, with_pos):
    z = F.normalize(torch.cat([z1, z2]).double(), dim=1)
    n = z1.shape[0]
    total = 0.0
    for i in range(2 * n):
        p = (i + n) % (2 * n)
        den = sum(
            math.exp(float(z[i] @ z[k]) / t)
            for k in range(2 * n)
            if k != i and (with_pos or k != p)
        )
        total += -float(z[i] @ z[p]) / t + math.log(den)
    return total / (2 * n)


@pytest.mark.parametrize("with_pos", [False, True])
@pytest.mark.parametrize("branches", ["both", "global", "local"])
def test_loss_equals_explicit_formula(with_pos, branches):
    torch.manual_seed(1)
    g1, g2 = torch.randn(3, 8, dtype=torch.float64), torch.randn(3, 8, dtype=torch.float64)
    l1, l2 = torch.randn(7, 8, dtype=torch.float64), torch.randn(7, 8, dtype=torch.float64)
    total, lg, ll = glcnet_loss(
        g1,
        g2,
        l1,
        l2,
        lam=0.3,
        temperature=0.5,
        positive_in_denominator=with_pos,
        branches=branches,
    )
    ref_g, ref_l = _nt_xent_loop(g1, g2, 0.5, with_pos), _nt_xent_loop(l1, l2, 0.5, with_pos)
    expected = {"both": 0.3 * ref_g + 0.7 * ref_l, "global": ref_g, "local": ref_l}[branches]
    assert total.item() == pytest.approx(expected, rel=1e-9)


def test_view_theta_matches_rot90_and_flip():
    x = torch.arange(36.0).reshape(1, 1, 6, 6)
    full = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    for k in range(4):
        out = warp(x, view_theta(full, rot_k=torch.tensor([k])), 6, mode="nearest")
        assert any(torch.equal(out[0, 0], torch.rot90(x[0, 0], j)) for j in range(4))
    hf = warp(x, view_theta(full, hflip=torch.tensor([True])), 6, mode="nearest")
    assert torch.equal(hf[0, 0], x[0, 0].flip(1))


@pytest.mark.parametrize("patch_size", [5, 8])
def test_windows_correspond_through_a_coordinate_map(patch_size):
    """Carry (row, col) coordinate maps through the same warps: both window centres see the same
    source pixel, windows stay inside the views, and one call handles the whole batch."""
    torch.manual_seed(2)
    b, hs, ws, size = 16, 40, 48, 32
    aug = GLCNetViews(size=size)
    t1 = aug.geometry(b, torch.device("cpu"), second=False)
    t2 = aug.geometry(b, torch.device("cpu"), second=True)
    rows, cols = torch.meshgrid(
        torch.arange(hs, dtype=torch.float64), torch.arange(ws, dtype=torch.float64), indexing="ij"
    )
    coords = torch.stack([rows, cols])[None].expand(b, 2, hs, ws)
    m1, m2 = warp(coords, t1, size, mode="nearest"), warp(coords, t2, size, mode="nearest")
    c1, c2, valid = match_windows(t1, t2, (hs, ws), size, patch_size, patch_num=4)
    assert c1.shape == c2.shape == (b, 4, 2) and valid.shape == (b, 4)
    assert valid.float().mean() > 0.5
    half = patch_size // 2
    for c in (c1, c2):
        assert (c - half >= 0).all() and (c - half + patch_size <= size).all()
    for i in range(b):
        for k in range(4):
            if valid[i, k]:
                y1, x1 = c1[i, k].tolist()
                y2, x2 = c2[i, k].tolist()
                assert torch.equal(m1[i, :, y1, x1], m2[i, :, y2, x2])


def test_unmatched_views_are_flagged_invalid():
    # two crops in opposite corners of the source never overlap
    boxes1 = torch.tensor([[-0.6, -0.6, 0.3, 0.3]])
    boxes2 = torch.tensor([[0.6, 0.6, 0.3, 0.3]])
    _, _, valid = match_windows(view_theta(boxes1), view_theta(boxes2), (32, 32), 16, 4, 4)
    assert not valid.any()


def test_index_map_equals_nearest_warp():
    torch.manual_seed(3)
    t = GLCNetViews(size=20).geometry(3, torch.device("cpu"), second=True)
    idx = (
        torch.arange(1, 25 * 30 + 1, dtype=torch.float64).reshape(1, 1, 25, 30).expand(3, 1, 25, 30)
    )
    assert torch.equal(
        source_index_map(t, (25, 30), 20), warp(idx, t, 20, mode="nearest")[:, 0].long()
    )


def test_window_mean_equals_slicing():
    torch.manual_seed(4)
    feat = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    centres = torch.tensor([[[2, 2], [6, 9]], [[9, 3], [5, 5]]])
    out = window_mean(feat, centres, 4)
    for b in range(2):
        for k in range(2):
            y, x = centres[b, k].tolist()
            ref = feat[b, :, y - 2 : y + 2, x - 2 : x + 2].mean(dim=(1, 2))
            assert torch.allclose(out[b, k], ref)


@pytest.mark.parametrize("low, high", [((16, 16), (64, 64)), ((5, 6), (17, 23)), ((7, 9), (7, 9))])
@pytest.mark.parametrize("patch_size", [1, 3, 4])
def test_upsampled_window_mean_equals_upsampling_then_slicing(low, high, patch_size):
    torch.manual_seed(7)
    low_res = torch.randn(2, 3, *low, dtype=torch.float64, requires_grad=True)
    half = patch_size // 2
    gen = torch.Generator().manual_seed(8)
    centres = torch.stack(
        [torch.randint(half, n - patch_size + half + 1, (2, 5), generator=gen) for n in high], -1
    )
    dense = F.interpolate(low_res, size=high, mode="bilinear", align_corners=False)
    expected = torch.zeros(2, 5, 3, dtype=torch.float64)
    for b in range(2):
        for k in range(5):
            y, x = (int(v) - half for v in centres[b, k])
            expected[b, k] = dense[b, :, y : y + patch_size, x : x + patch_size].mean(dim=(1, 2))
    out = upsampled_window_mean(low_res, centres, patch_size, high)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    weights = torch.randn_like(out)
    (g_ours,) = torch.autograd.grad((out * weights).sum(), low_res)
    (g_ref,) = torch.autograd.grad((expected * weights).sum(), low_res)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-12, atol=1e-12)


def test_model_local_projection_equals_full_resolution_path():
    torch.manual_seed(9)
    m = GLCNetModel(backbone="resnet18", in_channels=3).double().eval()
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    centres = torch.tensor([[[8, 8], [20, 24]], [[12, 12], [27, 10]]])
    _, local = m(x, centres, patch_size=5)
    _, dense = m.features(x)  # the (B, 64, H, W) map D itself
    assert dense.shape == (2, 64, 32, 32)
    torch.testing.assert_close(local, m.local_head(window_mean(dense, centres, 5)))


def test_views_any_band_count_and_range():
    torch.manual_seed(5)
    for c, rgb in [(1, None), (4, (2, 1, 0)), (5, (0, 1, 2))]:
        v1, v2, _, _ = GLCNetViews(size=24, rgb_bands=rgb)(torch.rand(3, c, 30, 30))
        assert v1.shape == v2.shape == (3, c, 24, 24)
        assert v2.min() >= 0 and v2.max() <= 1 and torch.isfinite(v2).all()


def test_model_shapes_and_gradients():
    torch.manual_seed(6)
    m = GLCNetModel(backbone="resnet18", in_channels=4)
    x = torch.rand(2, 4, 32, 32)
    centres = torch.tensor([[[8, 8], [20, 24]], [[12, 12], [27, 10]]])
    g, loc = m(x, centres, patch_size=8)
    assert g.shape == (2, 64) and loc.shape == (2, 2, 64)
    (g.sum() + loc.sum()).backward()
    assert m.net.encoder.conv1.weight.grad.abs().sum() > 0
