"""The MONAI bundle ``multidomain_mr_seg``: train, inference (NIfTI with the input's affine), verify."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_ext.multidomain.bundle import bundle_dir
from monai_ext.multidomain.data import validate_datalist
from plugins.errors import UserInputError


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny convolutions on a shared CPU: one thread avoids OpenMP spin contention (~5x faster)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


CONFIGS = bundle_dir() / "configs"
TINY = ["--features", "[4,4,8,8,16,4]"]
TINY_KW = {"features": [4, 4, 8, 8, 16, 4]}


def _make_datalist(root: Path) -> Path:
    """Two synthetic domains (3 and 5 classes) as NIfTI volumes with non-trivial affines."""
    from monai.data import create_test_image_3d

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(0)
    lists: dict[str, list] = {"training": [], "validation": [], "test": []}
    for d, nc in enumerate([3, 5]):
        for i, role in enumerate(["training", "training", "validation", "test"]):
            img, seg = create_test_image_3d(
                40,
                36,
                10,
                num_objs=4,
                rad_max=4,
                rad_min=2,
                num_seg_classes=nc - 1,
                random_state=rng,
            )
            aff = np.diag([2.0, 2.0, 3.0, 1.0])
            aff[:3, 3] = [-10.0 * d, 5.0, 7.0 + i]
            nib.save(nib.Nifti1Image(img.astype(np.float32), aff), root / f"d{d}_{i}_img.nii.gz")
            nib.save(nib.Nifti1Image(seg.astype(np.uint8), aff), root / f"d{d}_{i}_lab.nii.gz")
            lists[role].append(
                {"image": f"d{d}_{i}_img.nii.gz", "label": f"d{d}_{i}_lab.nii.gz", "domain": d}
            )
    path = root / "datalist.json"
    path.write_text(json.dumps(lists))
    return path


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("bundle")
    return root, _make_datalist(root / "data")


def _train_kwargs(root: Path, datalist: Path) -> dict:
    return {
        "config_file": str(CONFIGS / "train.yaml"),
        "meta_file": str(CONFIGS / "metadata.json"),
        "bundle_root": str(root),
        "datalist": str(datalist),
        "max_epochs": 1,
        "batches_per_epoch": 2,
        "val_interval": 1,
        "samples_per_domain": 2,
        **TINY_KW,
    }


def test_bundle_trains_and_infers_with_affine(tiny_bundle: tuple[Path, Path]) -> None:
    from monai.bundle import run

    from monai_ext.multidomain.model import MultiDomainUNet

    root, datalist = tiny_bundle
    run(**_train_kwargs(root, datalist))
    ckpt = root / "models" / "model.pt"
    assert ckpt.exists()
    assert (root / "eval" / "metrics.csv").exists()
    state = torch.load(ckpt, map_location="cpu")
    net = MultiDomainUNet(2, 1, [3, 5], **TINY_KW)
    net.load_state_dict(state)  # the saved weights are the multi-domain network's
    # make each head predict its last class everywhere: the output then shows which head ran
    with torch.no_grad():
        for head in net.heads:
            head.weight.zero_()
            head.bias.zero_()
            head.bias[-1] = 10.0
    torch.save(net.state_dict(), ckpt)
    out = root / "pred"
    run(
        config_file=str(CONFIGS / "inference.yaml"),
        meta_file=str(CONFIGS / "metadata.json"),
        bundle_root=str(root),
        datalist=str(datalist),
        output_dir=str(out),
        **TINY_KW,
    )
    for d, last in ((0, 2), (1, 4)):
        src = nib.load(datalist.parent / f"d{d}_3_img.nii.gz")
        seg = nib.load(out / f"d{d}_3_img_seg.nii.gz")
        assert seg.shape == src.shape
        np.testing.assert_allclose(seg.affine, src.affine, atol=1e-5)
        assert np.unique(np.asarray(seg.dataobj)).tolist() == [last]


def test_verify_net_in_out() -> None:
    from monai.bundle import verify_net_in_out

    verify_net_in_out(
        net_id="network_def",
        meta_file=str(CONFIGS / "metadata.json"),
        config_file=str(CONFIGS / "inference.yaml"),
        device="cpu",
        n=2,
        **TINY_KW,
    )
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    fmt = meta["network_data_format"]
    assert (
        fmt["inputs"]["image"]["num_channels"] == 1 and fmt["outputs"]["pred"]["num_channels"] == 3
    )


@pytest.mark.slow
def test_bundle_command_line(tiny_bundle: tuple[Path, Path], tmp_path: Path) -> None:
    root, datalist = tiny_bundle
    kw = _train_kwargs(tmp_path, datalist)
    cmd = [sys.executable, "-m", "monai.bundle", "run"]
    for k, v in kw.items():
        cmd += [f"--{k}", json.dumps(v) if isinstance(v, list) else str(v)]
    subprocess.run(
        cmd, check=True, capture_output=True, env={**os.environ, "PYTHONWARNINGS": "ignore"}
    )
    assert (tmp_path / "models" / "model.pt").exists()
    cmd = [sys.executable, "-m", "monai.bundle", "verify_net_in_out", "network_def"]
    cmd += [
        "--config_file",
        str(CONFIGS / "inference.yaml"),
        "--meta_file",
        str(CONFIGS / "metadata.json"),
        *TINY,
    ]
    subprocess.run(cmd, check=True, capture_output=True)


def test_bad_inputs_give_clear_errors(tmp_path: Path) -> None:
    datalist = _make_datalist(tmp_path)
    items = json.loads(datalist.read_text())["training"]
    assert validate_datalist(items, [3, 5], tmp_path) == items
    (tmp_path / "corrupt.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(UserInputError, match="corrupt.nii.gz is not a readable NIfTI"):
        validate_datalist([{"image": "corrupt.nii.gz", "domain": 0}], [3, 5], tmp_path)
    nib.save(nib.Nifti1Image(np.zeros((4, 4), np.float32), np.eye(4)), tmp_path / "flat.nii.gz")
    with pytest.raises(UserInputError, match="flat.nii.gz has 2 dimensions"):
        validate_datalist([{"image": "flat.nii.gz", "domain": 0}], [3, 5], tmp_path)
    d1 = next(i for i in items if i["domain"] == 1)  # labels up to 4
    with pytest.raises(
        UserInputError, match=r"d1_0_lab.nii.gz holds label value 4 outside domain 0"
    ):
        validate_datalist([{**d1, "domain": 0}], [3, 5], tmp_path)
    with pytest.raises(UserInputError, match="domain id 7 of d0_0_img.nii.gz is out of range"):
        validate_datalist([{**items[0], "domain": 7}], [3, 5], tmp_path)
