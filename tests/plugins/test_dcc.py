"""DC / DCC dataset condensation: matching distance, one-pass real gradient, warm-up, DSA, loops,
vmapped evaluation and the NTK diagnostic, each against an explicit reference or a property."""

import json

import pytest
import torch
import torch.nn.functional as F
import yaml

from plugins.errors import UserInputError
from plugins.methods.dcc import (
    ConvNet,
    DCCConfig,
    condense,
    empirical_ntk,
    gradient_match_distance,
    kernel_distance,
    loops_for_ipc,
    use_contrastive,
)
from plugins.methods.dcc.dsa import OPS, DSAConfig, apply_dsa, sample_dsa
from plugins.methods.dcc.evaluate import EvalConfig, _train_sequential, _train_vmapped
from plugins.methods.dcc.match import (
    dcc_matching_loss,
    real_class_mean_gradient,
    real_class_mean_gradient_loop,
)


@pytest.fixture(autouse=True)
def one_thread():
    # small convolutions on an oversubscribed 2-core machine run ~10x faster on one thread
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _reference_distance(g_syn, g_real, eps=1e-6):
    total = 0.0
    for gs, gr in zip(g_syn, g_real):
        if gs.ndim == 1:
            continue
        gs, gr = gs.double().reshape(gs.shape[0], -1), gr.double().reshape(gr.shape[0], -1)
        for i in range(gs.shape[0]):
            dot = sum(float(a) * float(b) for a, b in zip(gs[i], gr[i]))
            na = sum(float(a) ** 2 for a in gs[i]) ** 0.5
            nb = sum(float(b) ** 2 for b in gr[i]) ** 0.5
            total += 1.0 - dot / (na * nb + eps)
    return total


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradient_match_distance_against_loop(dtype):
    torch.manual_seed(0)
    shapes = [(4, 3, 3, 3), (4,), (5, 4), (5,), (2, 6)]
    g_syn = [torch.randn(s, dtype=dtype) for s in shapes]
    g_real = [torch.randn(s, dtype=dtype) for s in shapes]
    got = gradient_match_distance(g_syn, g_real)
    assert got.item() == pytest.approx(_reference_distance(g_syn, g_real), rel=1e-5)
    # identical gradients are at distance ~0, opposite ones at 2 per row (4 + 5 + 2 rows)
    assert gradient_match_distance(g_real, g_real).item() == pytest.approx(0.0, abs=1e-4)
    neg = [-g for g in g_real]
    assert gradient_match_distance(neg, g_real).item() == pytest.approx(2.0 * 11, rel=1e-4)


def test_bias_only_gradients_contribute_zero():
    assert gradient_match_distance([torch.ones(3)], [-torch.ones(3)]).item() == 0.0


def _net(channels=2, size=8, width=6, classes=3):
    torch.manual_seed(1)
    return ConvNet(channels, classes, size, width=width, depth=2).double()


def test_one_pass_real_gradient_equals_per_class_loop():
    net = _net()
    torch.manual_seed(2)
    x = torch.randn(11, 2, 8, 8, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 0, 0, 2, 1])  # unequal class sizes: 5, 3, 3
    one = real_class_mean_gradient(net, x, y, 3)
    loop = real_class_mean_gradient_loop(net, x, y, 3)
    for a, b in zip(one, loop, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_dcc_loss_equals_literal_per_class_implementation():
    net = _net()
    torch.manual_seed(3)
    real = torch.randn(3, 4, 2, 8, 8, dtype=torch.float64)
    syn = torch.randn(3, 2, 2, 8, 8, dtype=torch.float64)
    cfg = DSAConfig()
    params = sample_dsa(3, 8, cfg, torch.Generator().manual_seed(0), op="rotate")
    got = dcc_matching_loss(net, real, syn, cfg, params=params)

    # literal: augment class by class with that class's parameters, average per-class gradients
    ps = [p for p in net.parameters()]
    g_real = [torch.zeros_like(p) for p in ps]
    for c in range(3):
        xr = apply_dsa(real[c], params, torch.full((4,), c), cfg)
        grads = torch.autograd.grad(F.cross_entropy(net(xr), torch.full((4,), c)), ps)
        g_real = [a + g / 3 for a, g in zip(g_real, grads)]
    xs = torch.cat([apply_dsa(syn[c], params, torch.full((2,), c), cfg) for c in range(3)])
    ys = torch.arange(3).repeat_interleave(2)
    g_syn = torch.autograd.grad(F.cross_entropy(net(xs), ys), ps)
    want = _reference_distance(g_syn, g_real)
    assert got.item() == pytest.approx(want, rel=1e-9)


def test_warmup_switches_at_stated_iterations():
    assert not use_contrastive(0, 0)
    assert not use_contrastive(249, 9)
    assert use_contrastive(250, 0)
    assert use_contrastive(0, 10)
    assert use_contrastive(1000, 50)


def test_condense_counts_contrastive_steps_after_warmup():
    torch.manual_seed(0)
    x = torch.rand(30, 1, 8, 8)
    y = torch.arange(3).repeat(10)
    from plugins.data import ImageTensorDataset

    data = ImageTensorDataset(x, y, ["a", "b", "c"])
    cfg = DCCConfig(
        batch_real=4, inner_loops=3, net_epochs=1, width=4, depth=2, warmup_outer=1, warmup_inner=2
    )
    syn = condense(data, 1, "dcc", True, 3, cfg, "cpu", seed=0)
    # outer 0: inner 2 only (1 step); outers 1 and 2: all 3 inner steps
    assert syn.contrastive_steps == 1 + 3 + 3
    dc = condense(data, 1, "dc", True, 2, cfg, "cpu", seed=0)
    assert dc.contrastive_steps == 0 and len(dc.losses) == 2
    assert syn.images.shape == (3, 1, 8, 8) and torch.isfinite(syn.images).all()
    # paper schedule: 250 of 1,000 outer iterations, scaled when the budget is cut
    assert DCCConfig().resolved_warmup_outer() == 250
    assert DCCConfig(outer_iters=10).resolved_warmup_outer() == 3


def test_random_selection_is_real_images_of_each_class():
    from plugins.data import ImageTensorDataset

    x = torch.arange(24, dtype=torch.float32).view(24, 1, 1, 1).expand(24, 1, 8, 8).contiguous()
    y = torch.arange(3).repeat(8)
    syn = condense(ImageTensorDataset(x / 24, y, ["a", "b", "c"]), 2, "random", device="cpu")
    px = syn.as_dataset().images
    for img, label in zip(px, syn.labels):
        value = round(float(img[0, 0, 0]) * 24)
        assert value % 3 == int(label)  # image index i has label i % 3


@pytest.mark.parametrize("op", OPS)
def test_dsa_same_parameters_for_real_and_synthetic_of_a_class(op):
    cfg = DSAConfig()
    gen = torch.Generator().manual_seed(0)
    params = sample_dsa(2, 16, cfg, gen, op=op)
    torch.manual_seed(0)
    img = torch.rand(2, 3, 16, 16)  # the same image put in a "real" and a "synthetic" batch
    real = torch.cat([img[:1].expand(5, -1, -1, -1), img[1:].expand(5, -1, -1, -1)])
    syn = torch.cat([img[:1].expand(2, -1, -1, -1), img[1:].expand(2, -1, -1, -1)])
    out_r = apply_dsa(real, params, torch.tensor([0] * 5 + [1] * 5), cfg)
    out_s = apply_dsa(syn, params, torch.tensor([0, 0, 1, 1]), cfg)
    torch.testing.assert_close(out_r[0], out_s[0])
    torch.testing.assert_close(out_r[4], out_s[1])
    torch.testing.assert_close(out_r[5], out_s[2])
    torch.testing.assert_close(out_r[9], out_s[3])


def test_dsa_ops_against_explicit_transforms():
    cfg = DSAConfig()
    x = torch.rand(2, 1, 8, 8)
    g = torch.tensor([0, 1])
    flip = apply_dsa(
        x,
        sample_dsa(2, 8, cfg, op="flip").__class__("flip", {"flip": torch.tensor([True, False])}),
        g,
        cfg,
    )
    torch.testing.assert_close(flip[0], x[0].flip(-1), atol=1e-6, rtol=0)
    torch.testing.assert_close(flip[1], x[1], atol=1e-6, rtol=0)
    from plugins.methods.dcc.dsa import DSAParams

    crop = apply_dsa(x, DSAParams("crop", {"shift": torch.tensor([[1, 0], [0, -1]])}), g, cfg)
    want0 = torch.zeros_like(x[0])
    want0[..., 1:] = x[0, ..., :-1]  # content moves right by one pixel, zero fill
    want1 = torch.zeros_like(x[1])
    want1[..., :-1, :] = x[1, ..., 1:, :]  # content moves up by one pixel
    torch.testing.assert_close(crop[0], want0, atol=1e-6, rtol=0)
    torch.testing.assert_close(crop[1], want1, atol=1e-6, rtol=0)
    cut = apply_dsa(
        x,
        DSAParams(
            "cutout", {"centre": torch.tensor([[4, 4], [2, 6]]), "side": torch.tensor([4, 4])}
        ),
        g,
        cfg,
    )
    assert (cut[0, 0, 2:6, 2:6] == 0).all() and cut[0].ne(0).sum() == x[0].ne(0).sum() - 16
    # the augmentation is differentiable w.r.t. the images
    xs = x.clone().requires_grad_(True)
    apply_dsa(xs, sample_dsa(2, 8, cfg, op="rotate"), g, cfg).sum().backward()
    assert xs.grad is not None and xs.grad.abs().sum() > 0


def test_ipc_table_and_fallback_rule():
    assert loops_for_ipc(1) == (10, 5)
    assert loops_for_ipc(10) == (10, 50)
    assert loops_for_ipc(20) == (20, 25)
    assert loops_for_ipc(30) == (30, 20)
    assert loops_for_ipc(40) == (40, 15)
    assert loops_for_ipc(50) == (50, 10)
    assert loops_for_ipc(5) == (10, 5)  # nearest: 1 (4 away) rather than 10 (5 away)
    assert loops_for_ipc(15) == (10, 50)  # tie between 10 and 20 goes to the smaller
    assert loops_for_ipc(3) == (10, 5)
    assert loops_for_ipc(100) == (50, 10)
    with pytest.raises(UserInputError, match="ipc"):
        loops_for_ipc(0)


def test_vmapped_models_train_exactly_like_a_loop():
    import copy

    torch.manual_seed(0)
    models = [ConvNet(1, 3, 8, width=4, depth=2).double() for _ in range(3)]
    twins = copy.deepcopy(models)
    x = torch.randn(6, 1, 8, 8, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    cfg = EvalConfig(epochs=4, batch_size=256, dsa=False)
    a = _train_vmapped(x, y, models, cfg, torch.Generator().manual_seed(0), False)
    b = _train_sequential(x, y, twins, cfg, torch.Generator().manual_seed(0), False)
    for ma, mb in zip(a, b, strict=True):
        for pa, pb in zip(ma.parameters(), mb.parameters(), strict=True):
            torch.testing.assert_close(pa, pb, rtol=1e-9, atol=1e-11)
    assert not torch.equal(a[0].classifier.weight, a[1].classifier.weight)


def test_empirical_ntk_against_autograd_loop():
    net = _net(channels=1, size=4, width=3, classes=2)
    torch.manual_seed(4)
    probe = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    k = empirical_ntk(net, probe)
    ps = list(net.parameters())
    rows = []
    for i in range(3):
        out = net(probe[i : i + 1])[0]
        rows.append(
            [
                torch.cat([g.flatten() for g in torch.autograd.grad(out[c], ps, retain_graph=True)])
                for c in range(2)
            ]
        )
    want = torch.tensor(
        [
            [sum(float(rows[i][c] @ rows[j][c]) for c in range(2)) for j in range(3)]
            for i in range(3)
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(k, want, rtol=1e-9, atol=1e-10)
    assert kernel_distance(k, 3.0 * k) == pytest.approx(0.0, abs=1e-12)
    assert 0.0 < kernel_distance(k, torch.eye(3, dtype=torch.float64)) <= 1.0


def test_convnet_rejects_too_small_images():
    with pytest.raises(UserInputError, match="image_size"):
        ConvNet(1, 10, 4, depth=3)


def _context(run_dir, command="run", **kwargs):
    from plugins.methods.dcc.run import OPTIONS
    from plugins.reporting import RunContext, RunDir

    return RunContext(
        "dcc",
        RunDir(path=run_dir),
        device=torch.device("cpu"),
        progress=False,
        option_set=OPTIONS[command],
        **kwargs,
    )


def test_run_writes_run_directory(tmp_path):
    from plugins.methods.dcc.run import run

    ctx = _context(
        tmp_path / "run",
        demo=True,
        options={
            "width": 8,
            "outer_iters": 1,
            "batch_real": 8,
            "eval_epochs": 3,
            "kernel_steps": 1,
            "probe": 3,
            "image_size": 8,
        },
    )
    metrics = run(ctx)
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {
        "config.yaml",
        "metrics.json",
        "checkpoint.pt",
        "synthetic.pt",
        "loss.png",
        "spectrum.png",
        "embedding.png",
        "kernel_velocity.png",
        "synthetic_grid.png",
        "synthetic_class_0_0.png",
    } <= files
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["acc_mean"] == pytest.approx(metrics["acc_mean"])
    assert 0.0 <= metrics["acc_mean"] <= 1.0
    from plugins.methods.dcc import SyntheticSet

    syn = SyntheticSet.load(tmp_path / "run" / "synthetic.pt")
    assert syn.images.shape == (10, 1, 8, 8) and syn.labels.tolist() == list(range(10))
    # config.yaml records the effective iterations of every stage (ipc 1: the papers' 10 inner
    # image updates and 5 network epochs; demo evaluation: 3 epochs as set)
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["stages"] == {
        "outer_iters": 1,
        "inner_loops": 10,
        "net_epochs": 5,
        "warmup_outer": 0,
        "warmup_inner": 10,
        "eval_epochs": 3,
        "kernel_steps": 1,
    }
    assert config["condense"]["inner_loops"] == 10 and config["evaluate"]["epochs"] == 3


@pytest.mark.slow
def test_condensed_digits_beat_random_selection():
    from plugins.methods.dcc import EvalConfig, evaluate_synthetic
    from plugins.methods.dcc.run import _load

    train, test, _ = _load(None, 16)
    cfg = DCCConfig(batch_real=16, width=32)
    ecfg = EvalConfig(epochs=30, width=32)
    scores = {}
    for method in ("random", "dc", "dcc"):
        syn = condense(train, 1, method, True, 2, cfg, "cpu", seed=0)
        scores[method] = evaluate_synthetic(syn, test, 2, ecfg, "cpu", seed=0)["acc_mean"]
    assert scores["dc"] > scores["random"] + 0.05
    assert scores["dcc"] > scores["random"] + 0.05


def test_reproduce_table_rows_grids_and_contrastive_step_counts(tmp_path):
    from plugins.methods.dcc.run import reproduce

    outer = 2
    ctx = _context(
        tmp_path / "run",
        "reproduce",
        data="digits",
        options={
            "outer_iters": outer,
            "ipcs": "1",
            "methods": "random,dc,dcc",
            "image_size": 8,
            "width": 8,
            "batch_real": 8,
            "eval_epochs": 2,
            "n_models": 2,
            "test_limit": 200,
        },
    )
    metrics = reproduce(ctx)
    run = tmp_path / "run"
    for method in ("random", "dc", "dcc"):
        assert 0.0 <= metrics[f"ipc1_{method}_acc_mean"] <= 1.0
        assert (run / f"ipc1_{method}_grid.png").exists()
        assert (run / f"ipc1_{method}.pt").exists()
    rows = [r for r in (run / "table.md").read_text().splitlines() if r.startswith("| 1 |")]
    steps = {r.split("|")[2].strip(): int(r.split("|")[5]) for r in rows}
    # warm-up: round(250 / 1000 * 2) = 1 outer iteration of DC, then 10 DCC image updates per
    # outer iteration (ipc 1 -> 10 inner steps); DC and random never take a contrastive step
    assert steps == {"random": 0, "dc": 0, "dcc": (outer - 1) * 10}
