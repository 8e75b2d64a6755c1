"""SimCLR baseline: the loss it trains is nt_xent on its projections, and a short run on real digits
learns features that beat the same encoder at random initialisation."""

import json

import pytest
import torch

from plugins.checkpoint import load_checkpoint
from plugins.data import load_train_test
from plugins.losses import nt_xent
from plugins.methods.simclr import (
    SimCLR,
    SimCLRConfig,
    TinyResNet,
    evaluate_representation,
    small_resnet,
    train_simclr,
)
from plugins.reporting import RunContext, RunDir


def test_forward_is_nt_xent_of_projections():
    torch.manual_seed(0)
    enc, dim = small_resnet(2, "tiny")
    model = SimCLR(enc, dim, SimCLRConfig(temperature=0.3)).eval()
    x1, x2 = torch.rand(4, 2, 8, 8), torch.rand(4, 2, 8, 8)
    z = model.projector(model.encoder(torch.cat([x1, x2])))
    assert torch.allclose(model(x1, x2), nt_xent(z[:4], z[4:], 0.3), atol=1e-6)


@pytest.mark.parametrize("arch,channels", [("tiny", 1), ("tiny", 5), ("resnet18", 3)])
def test_small_resnet_shapes(arch, channels):
    enc, dim = small_resnet(channels, arch)
    assert enc(torch.rand(2, channels, 16, 16)).shape == (2, dim)


def test_unknown_arch_is_a_clear_error():
    from plugins.errors import UserInputError

    with pytest.raises(UserInputError, match="unknown encoder arch"):
        small_resnet(3, "vgg_nope")


def test_training_beats_random_init_on_digits():
    train_set, test_set, _ = load_train_test(None, size=16)
    torch.manual_seed(0)
    random_scores = evaluate_representation(TinyResNet(1), train_set, test_set, device="cpu")
    model, losses = train_simclr(
        train_set, SimCLRConfig(epochs=8), device="cpu", seed=0, progress=False
    )
    scores = evaluate_representation(model.encoder, train_set, test_set, device="cpu")
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    assert scores["knn_acc"] > random_scores["knn_acc"] + 0.03
    assert scores["linear_acc"] >= random_scores["linear_acc"]


def test_run_writes_run_directory(tmp_path):
    ctx = RunContext(
        "simclr",
        RunDir(path=tmp_path / "run"),
        epochs=1,
        device=torch.device("cpu"),
        demo=True,
        progress=False,
    )
    from plugins.methods.simclr.run import run

    metrics = run(ctx)
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {
        "config.yaml",
        "metrics.json",
        "checkpoint.pt",
        "loss.png",
        "spectrum.png",
        "embedding.png",
    } <= files
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["knn_acc"] == pytest.approx(metrics["knn_acc"])
    assert 0.0 <= metrics["knn_acc"] <= 1.0
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")  # plain types only
    assert set(state) == {"encoder", "projector", "config"}
