import json

import torch

from agri_ext.spec import SPEC
from plugins.reporting import RunContext, RunDir


def test_spec_is_import_light():
    import subprocess
    import sys

    code = "import sys, agri_ext.spec, agri_ext; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert SPEC.name == "claws" and SPEC.demo_metric == "gmm_nmi"


def test_demo_run_writes_outputs(tmp_path):
    from agri_ext.run import OPTIONS, run

    ctx = RunContext(
        "claws",
        RunDir(path=tmp_path),
        device=torch.device("cpu"),
        demo=True,
        epochs=1,
        options={"train_limit": 200, "test_limit": 200, "widths": [8, 16, 16]},
        progress=False,
        option_set=OPTIONS["run"],
    )
    metrics = run(ctx)
    for name in (
        "metrics.json",
        "config.yaml",
        "checkpoint.pt",
        "loss.png",
        "spectrum.png",
        "embedding.png",
        "masks.png",
    ):
        assert (tmp_path / name).exists(), name
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert 0 <= saved["gmm_nmi"] <= 1 and set(metrics) >= {"gmm_ari", "gmm_ami", "gmm_acc"}
    # digits clusters are far from random even after one short epoch
    assert metrics["kmeans_nmi"] > 0.2
    # config.yaml: the declared demo defaults and the effective training length (200 images in
    # batches of 128: one full batch and one of 72)
    import yaml

    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert config["stages"] == {"train": {"epochs": 1, "steps_per_epoch": 2, "steps": 2}}
    assert config["widths"] == [8, 16, 16] and config["image_size"] == 8
    assert config["train_images"] == 200 and config["test_images"] == 200


def test_embed_branch_masks_crop_branch_of_pixel_model():
    from agri_ext import CLAWS, excess_green_mask
    from agri_ext.config import CLAWSConfig
    from agri_ext.train import embed_branch

    torch.manual_seed(0)
    model = CLAWS(3, CLAWSConfig(widths=(4, 8, 8))).eval()
    x = torch.rand(5, 3, 12, 12) * torch.tensor([0.5, 0.4, 0.3])[:, None, None]
    x[:, :, 3:8, 3:8] = torch.tensor([0.2, 0.7, 0.2])[:, None, None]
    masked = x * excess_green_mask(x)
    with torch.no_grad():
        assert torch.allclose(embed_branch(model, x, "crop"), model.encoder_c(masked), atol=1e-6)
        assert torch.allclose(embed_branch(model, x, "image"), model.encoder_i(x), atol=1e-6)
        assert not torch.allclose(embed_branch(model, x, "image", masked=True), model.encoder_i(x))
