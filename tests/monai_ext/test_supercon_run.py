"""``run(ctx)`` of SuperCon on the embedded default (digits with one class made rare)."""

from __future__ import annotations

import json

import torch

from plugins.reporting import RunContext, RunDir


def test_run_demo_writes_outputs(tmp_path):
    from monai_ext.supercon.run import run

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ctx = RunContext(
            "supercon",
            RunDir(path=tmp_path / "run"),
            demo=True,
            device=torch.device("cpu"),
            progress=False,
        )
        out = run(ctx)
    finally:
        torch.set_num_threads(n)
    files = {p.name for p in ctx.run_dir.path.iterdir()}
    assert {"metrics.json", "config.yaml", "checkpoint.pt"} <= files
    assert {"loss.png", "spectrum.png", "embedding.png", "roc.png", "confusion.png"} <= files
    metrics = json.loads((ctx.run_dir.path / "metrics.json").read_text())
    # the rare class really is rare in training (2%), and AUC comes from scores
    assert abs(out["train_minority_fraction"] - 0.02) < 0.005
    assert 0.5 < metrics["roc_auc"] <= 1.0
    assert set(out) >= {"minority_f1", "roc_auc", "balanced_accuracy"}
