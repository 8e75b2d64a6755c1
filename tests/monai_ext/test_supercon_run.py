"""``run(ctx)`` of SuperCon on the embedded default (digits with one class made rare)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from plugins.checkpoint import load_checkpoint
from plugins.data import shared_path
from plugins.reporting import RunContext, RunDir
from plugins.threads import cpu_threads


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
    assert set(out) >= {"minority_f1", "minority_f1_at_threshold", "roc_auc", "balanced_accuracy"}
    # the threshold chosen on validation data is stored with the weights
    ckpt = load_checkpoint(ctx.run_dir.path / "checkpoint.pt", method="supercon")
    assert ckpt["threshold"] == out["threshold"] and 0 < out["threshold"] <= 1
    assert ckpt["positive"] == 0


def test_validation_hold_out_shares_no_patient_or_duplicate_with_train_or_test():
    from monai_ext.supercon.data import find_duplicates, split_indices
    from monai_ext.supercon.run import _hold_out

    rng = np.random.default_rng(1)
    patients = [f"p{i}" for i in rng.integers(0, 60, 300)]
    labels = np.array([int(p[1:]) % 5 == 0 for p in patients], dtype=np.int64)
    hashes = [f"h{i}" for i in range(300)]
    for a, b in [(3, 150), (10, 77), (60, 61), (5, 299)]:
        hashes[b] = hashes[a]
    keep = np.setdiff1d(np.arange(300), find_duplicates(hashes, patients, labels).dropped)
    patients, hashes = [patients[i] for i in keep], [hashes[i] for i in keep]
    labels = labels[keep]
    tr, te = split_indices(labels, patients, hashes, 0.2, seed=0)
    kept, va = _hold_out(labels, patients, hashes, tr, 0.15, seed=0)
    assert sorted(np.r_[kept, va].tolist()) == sorted(tr.tolist())
    for x, y in [(kept, va), (kept, te), (va, te)]:
        assert not {patients[i] for i in x} & {patients[i] for i in y}
        assert not {hashes[i] for i in x} & {hashes[i] for i in y}
    assert 0 < labels[va].mean() < 1  # stratified: both classes in validation


@pytest.mark.skipif(shared_path("isic", required=False) is None, reason="shared ISIC images absent")
def test_reproduce_reports_f1_at_the_validation_threshold(tmp_path):
    from monai_ext.supercon.run import reproduce

    options = dict(image_size=8, seeds=1, methods="ce,supercon", ratios="0.02", stage2_epochs=2)
    ctx = RunContext(
        "supercon",
        RunDir(path=tmp_path),
        epochs=1,
        device=torch.device("cpu"),
        progress=False,
        options=options,
    )
    with cpu_threads(1):
        out = reproduce(ctx)
    table = (tmp_path / "table.md").read_text()
    assert "melanoma F1 (val threshold)" in table and "predicted at val threshold" in table
    for m in ("ce", "supercon"):
        assert 0 <= out[f"bin_0.02/{m}/positive_f1_at_threshold"] <= 1
        assert 0 <= out[f"bin_0.02/{m}/roc_auc"] <= 1
    rows = json.loads((tmp_path / "metrics_per_seed.json").read_text())
    assert [(r["method"], r["seed"], r["ratio"]) for r in rows] == [
        ("ce", 0, 0.02),
        ("supercon", 0, 0.02),
    ]
    for r in rows:  # the threshold comes from validation data, the F1 at it from the test split
        assert np.isfinite(r["threshold"])
        assert (
            out[f"bin_0.02/{r['method']}/positive_f1_at_threshold"] == r["positive_f1_at_threshold"]
        )
    # predictions.csv: validation and test rows per method and seed; the positives behind each
    # threshold are the validation melanomas there
    import csv

    with (tmp_path / "predictions.csv").open() as f:
        preds = list(csv.DictReader(f))
    assert list(preds[0])[:8] == [
        "task",
        "ratio",
        "seed",
        "method",
        "path",
        "group",
        "label",
        "p_other",
    ]
    for r in rows:
        mine = [p for p in preds if p["method"] == r["method"] and p["split"] == "validation"]
        assert r["threshold_positives"] == sum(p["label"] == "melanoma" for p in mine) > 0
        assert r["threshold_from"] == "validation split"
        n_test = sum(p["method"] == r["method"] and p["split"] == "test" for p in preds)
        assert r["group_n"] == n_test  # the shared copy's groups are image ids
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["threshold_from"] == "validation"
    assert metrics["data"]["duplicates"]["cross_patient_sets"] == 0  # its copies are unclean
    assert (tmp_path / "roc_bin_0.02.png").exists()
    assert (tmp_path / "confusion_bin_0.02.png").exists()


@pytest.mark.parametrize(
    "options, match",
    [
        ({"methods": "ce,svm"}, "methods=ce,svm: expected one of ce, weighted_ce"),
        ({"ratios": "0.02,1.5"}, "ratios: each item must be a fraction"),
        ({"ratios": None}, "nothing to run"),
        ({"val_fraction": 0.7}, "val_fraction=0.7: expected at most 0.5"),
        ({"seeds": 0}, "seeds=0: expected at least 1"),
    ],
)
def test_reproduce_rejects_bad_options_before_loading_images(tmp_path, options, match):
    from monai_ext.supercon.run import reproduce
    from plugins.errors import UserInputError

    ctx = RunContext("supercon", RunDir(path=tmp_path), progress=False, options=options)
    with pytest.raises(UserInputError, match=match):
        reproduce(ctx)
