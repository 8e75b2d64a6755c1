"""The MONAI bundle ``supercon_skin`` on a tiny ISIC 2020-layout folder of real shared images:
stage 1, stage 2, inference CSV, ``verify_net_in_out``."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from monai_ext.supercon.bundle import bundle_dir
from monai_ext.supercon.data import bundle_datalists
from plugins.data import shared_path

CONFIGS = bundle_dir() / "configs"
META = str(CONFIGS / "metadata.json")
SMALL = {"arch": "micro", "image_size": 24, "batch_size": 8}


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _isic_folder(root: Path, per_class: int = 8) -> Path:
    """``metadata.csv`` (image_name, patient_id, target) + JPEGs copied from the shared ISIC set;
    two images per patient, so grouping matters."""
    src = shared_path("isic", required=False)
    if src is None:
        pytest.skip("shared ISIC data absent (../shared/data/isic)")
    data = root / "data"
    data.mkdir(parents=True)
    rows = []
    with (src / "labels.csv").open() as f:
        clean = [r for r in csv.DictReader(f) if r["clean"] == "1"]
    for target, name in ((1, "melanoma"), (0, "nevus")):
        picked = [r for r in clean if r["folder_label"] == name][:per_class]
        for i, r in enumerate(picked):
            shutil.copy(src / r["path"], data / f"{r['image_id']}.jpg")
            rows.append([r["image_id"], f"{name}_{i // 2}", target])
    with (data / "metadata.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_name", "patient_id", "target"])
        w.writerows(rows)
    return root


def test_bundle_trains_both_stages_and_writes_probability_csv(tmp_path):
    from monai.bundle import run, verify_net_in_out

    root = _isic_folder(tmp_path)
    lists = bundle_datalists(root / "data", val_fraction=0.25)
    patient = {}
    with (root / "data" / "metadata.csv").open() as f:
        for r in csv.DictReader(f):
            patient[r["image_name"]] = r["patient_id"]
    sides = [{patient[Path(i["image"]).stem] for i in lists[k]} for k in ("training", "validation")]
    assert not sides[0] & sides[1]

    common = {"meta_file": META, "bundle_root": str(root), **SMALL}
    run(config_file=str(CONFIGS / "train_stage1.yaml"), max_epochs=1, **common)
    stage1 = torch.load(root / "models" / "stage1.pt", map_location="cpu")
    run(config_file=str(CONFIGS / "train_stage2.yaml"), max_epochs=2, lr=0.05, **common)
    best = torch.load(root / "models" / "model.pt", map_location="cpu")
    best = best.get("model", best)
    stage1 = stage1.get("model", stage1)
    # stage 2 trained the classifier only: encoder weights and BN statistics are stage 1's
    for k, v in stage1.items():
        if not k.startswith("classifier"):
            assert torch.equal(v, best[k]), k
    assert not torch.equal(stage1["classifier.weight"], best["classifier.weight"])

    out = root / "eval" / "probabilities.csv"
    run(config_file=str(CONFIGS / "inference.yaml"), output_csv=str(out), **common)
    with out.open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["image", "other", "melanoma"]
    assert len(rows) == 1 + 16
    probs = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)

    verify_net_in_out(
        net_id="network_def",
        meta_file=META,
        config_file=str(CONFIGS / "inference.yaml"),
        arch="micro",
    )


@pytest.mark.slow
def test_bundle_command_line(tmp_path):
    """The documented ``python -m monai.bundle run`` commands, as a user types them."""
    root = _isic_folder(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    flags = ["--meta_file", META, "--bundle_root", str(root)]
    for k, v in SMALL.items():
        flags += [f"--{k}", str(v)]
    for cfg, extra in (
        ("train_stage1.yaml", ["--max_epochs", "1"]),
        ("train_stage2.yaml", ["--max_epochs", "1"]),
        ("inference.yaml", []),
    ):
        cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(CONFIGS / cfg)]
        subprocess.run(cmd + flags + extra, check=True, env=env, cwd=tmp_path)
    assert (root / "eval" / "probabilities.csv").is_file()
    cmd = [sys.executable, "-m", "monai.bundle", "verify_net_in_out", "network_def"]
    cmd += ["--meta_file", META, "--config_file", str(CONFIGS / "inference.yaml")]
    subprocess.run(cmd, check=True, env=env)
