"""The CLI's run function on the embedded Sentinel-2 tile (slow on a shared 2-core CPU)."""

import json

import pytest


@pytest.mark.slow
def test_run_demo_writes_outputs(tmp_path):
    from plugins.reporting import RunContext, RunDir
    from torchgeo_ext.options import OPTIONS
    from torchgeo_ext.run import run

    ctx = RunContext(
        method="glcnet",
        run_dir=RunDir(path=tmp_path / "run"),
        demo=True,
        progress=False,
        device="cpu",
        option_set=OPTIONS["run"],
    )
    metrics = run(ctx)
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {
        "metrics.json",
        "config.yaml",
        "glcnet.ckpt",
        "segmenter.ckpt",
        "classmap.tif",
        "classmap.png",
        "loss.png",
        "spectrum.png",
        "embedding.png",
        "matched_windows.png",
    } <= files
    assert metrics["classes_predicted"] >= 2 and metrics["final_loss"] > 0


@pytest.mark.slow
def test_reproduce_pipeline_smallest(tmp_path):
    from plugins.data import shared_path
    from plugins.reporting import RunContext, RunDir
    from torchgeo_ext.options import OPTIONS
    from torchgeo_ext.run import reproduce

    if shared_path("rs_seg", required=False) is None:
        pytest.skip("shared/data/rs_seg is not available")
    opts = dict(
        pretrain_steps=1,
        finetune_steps=1,
        scale=0.125,
        source_size=32,
        size=32,
        window=32,
        stride=32,
        seeds="0,1",
    )
    ctx = RunContext(
        method="glcnet",
        run_dir=RunDir(path=tmp_path / "rep"),
        progress=False,
        device="cpu",
        options=opts,
        option_set=OPTIONS["reproduce"],
    )
    metrics = reproduce(ctx)
    assert 0 <= metrics["glcnet_1pct_oa"] <= 1 and (tmp_path / "rep" / "reproduction.md").exists()
    per_seed = json.loads((tmp_path / "rep" / "metrics_per_seed.json").read_text())
    values = [per_seed[s]["glcnet_1pct_kappa"] for s in ("0", "1")]
    assert metrics["glcnet_1pct_kappa"] == pytest.approx(sum(values) / 2)
    assert metrics["glcnet_1pct_kappa_std"] == pytest.approx(abs(values[0] - values[1]) / 2)
