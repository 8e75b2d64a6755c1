"""``run mr-multidomain --data datalist.json`` on real spine and hippocampus MR: the datalist's
domain table, slices padded (never squashed) and scored on each file's own grid, the validation
list scored and named, bad input in one sentence."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from plugins.cli import main
from plugins.data import shared_path

SPINE = shared_path("spine_mr", "VB3", required=False)
HIPPO = shared_path("hippocampus_mr", required=False)
pytestmark = [
    pytest.mark.skipif(
        SPINE is None or HIPPO is None,
        reason="shared spine_mr/ and hippocampus_mr/ are absent (set CONTRASTIVE_PLUGINS_DATA)",
    ),
    pytest.mark.usefixtures("one_thread"),
]
TINY = [
    "--set", "features=4,4,8,8,16,4", "--set", "embedding_dim=8", "--set", "embedding_hidden=8",
    "--set", "augment_copies=0", "--set", "samples_per_domain=2",
    "--device", "cpu", "--no-progress",
]  # fmt: skip


def _spine(n: int) -> dict:
    img = SPINE / f"VB3_{n:02d}_img.nii.gz"
    return {"image": str(img), "label": str(img).replace("_img.", "_seg."), "domain": "spine"}


def _hippo(n: int) -> dict:
    name = f"hippocampus_{n:03d}.nii.gz"
    return {
        "image": str(HIPPO / "images" / name),
        "label": str(HIPPO / "labels" / name),
        "domain": "hippocampus",
    }


def _spine_row(spacing: float) -> dict:
    return {
        "name": "spine",
        "labels": ["background", "vertebral body"],
        "spacing": [spacing] * 3,
        "roi": [64, 64],
        "label_values": {"vertebral body": [1, 2, 3, 4, 5]},
    }


HIPPO_ROW = {
    "name": "hippocampus",
    "labels": ["background", "anterior", "posterior"],
    "spacing": [1.0, 1.0, 1.0],
    "roi": [32, 32],
}


def _write(path: Path, lists: dict) -> Path:
    path.write_text(json.dumps(lists))
    return path


def _scaled(x: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(x, [0.5, 99.5])
    return np.clip((x - lo) / (hi - lo), 0, 1)


def _centred(x: np.ndarray, canvas: tuple[int, int]) -> tuple[np.ndarray, int, int]:
    top, left = (canvas[0] - x.shape[0]) // 2, (canvas[1] - x.shape[1]) // 2
    out = np.zeros(canvas, x.dtype)
    out[top : top + x.shape[0], left : left + x.shape[1]] = x
    return out, top, left


def test_non_square_spine_slices_are_padded_never_squashed_and_cropped_back(
    tmp_path: Path,
) -> None:
    from monai_ext.multidomain.data import crop_back, datalist_domains

    lists = {"training": [_spine(1)], "test": [_spine(2)]}
    # declared spacing = the files' 1.5 mm: the network sees the slices exactly, zero-padded
    path = _write(tmp_path / "same.json", {"domains": [_spine_row(1.5)], **lists})
    (d,), has_val = datalist_domains(path)
    assert not has_val
    shapes = [nib.load(item["image"]).shape for item in lists["training"] + lists["test"]]
    canvas = tuple(int(np.ceil(max(64, *(s[i] for s in shapes)) / 16) * 16) for i in (0, 1))
    assert d["canvas"] == canvas and canvas[0] != canvas[1]  # e.g. 144 x 80: not a square
    for case, item in zip(d["cases"], lists["training"] + lists["test"], strict=True):
        image = np.asarray(nib.load(item["image"]).dataobj, dtype=np.float64)
        seg = np.asarray(nib.load(item["label"]).dataobj)
        assert image.shape[0] != image.shape[1]
        ref = _scaled(image)
        for z in (0, image.shape[2] // 2, image.shape[2] - 1):
            want, top, left = _centred(ref[:, :, z], canvas)
            np.testing.assert_allclose(d["image"][case.index[z], 0].numpy(), want, atol=1e-5)
            lab, _, _ = _centred((seg[:, :, z] > 0).astype(np.int64), canvas)
            np.testing.assert_array_equal(d["label"][case.index[z], 0].numpy(), lab)
        # the padded label cropped back is the file's mask on the file's grid, voxel for voxel
        back = crop_back(d["label"][case.index], case)
        np.testing.assert_array_equal(back[:, 0].numpy(), np.moveaxis(seg > 0, 2, 0))

    # declared 3 mm: resampled with the anatomy's aspect ratio kept, scored back on the 1.5 mm grid
    path = _write(tmp_path / "coarse.json", {"domains": [_spine_row(3.0)], **lists})
    (d,), _ = datalist_domains(path)
    for case, shape in zip(d["cases"], shapes, strict=True):
        top, left, h, w = case.box
        assert (h, w, len(case.index)) == tuple(round(s / 2) for s in shape)
        back = crop_back(d["label"][case.index], case)[:, 0].numpy()
        truth = case.truth[:, 0].numpy()
        assert back.shape == (shape[2], shape[0], shape[1]) == truth.shape
        dice = 2 * (back * truth).sum() / (back.sum() + truth.sum())
        # nearest down- and up-sampling, 2x on each axis, moves the rim by up to one voxel
        assert dice > 0.85
        centre = [np.nonzero(m)[i].mean() for m in (back, truth) for i in range(3)]
        # nearest resampling by ~2x picks one of each voxel pair: the mask moves by under a voxel
        np.testing.assert_allclose(centre[:3], centre[3:], atol=1.0)


def test_run_datalist_scores_its_single_validation_case_on_the_original_grid(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from monai_ext.multidomain.train import Settings, build, predict

    lists = {
        "domains": [_spine_row(3.0), HIPPO_ROW],
        "training": [_spine(1), _hippo(1), _hippo(3)],
        "validation": [_hippo(4)],
        "test": [_spine(2), _hippo(6)],
    }
    path = _write(tmp_path / "datalist.json", lists)
    out = tmp_path / "runs"
    select = ["--set", "select_every=1"]  # the weights of the best validation Dice are kept
    args = ["--data", str(path), "--epochs", "3", *select, *TINY, "--out", str(out)]
    code = main(["run", "mr-multidomain", *args])
    assert code == 0, capsys.readouterr().err
    (run_dir,) = out.iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["domains"] == ["spine", "hippocampus"]
    assert metrics["cases"] == {
        "validation": ["hippocampus_004"],
        "test": ["VB3_02_img", "hippocampus_006"],
    }
    assert metrics["split_of"]["val_dice_domain1"] == "validation"
    assert metrics["split_of"]["dice_mean"] == "test"
    assert "val_dice_domain0" not in metrics  # the spine has no validation case
    assert "validation" not in metrics  # the list is there: no "none" note
    assert re.fullmatch(
        r"step [123]: best mean validation Dice \(select_every=1\)", metrics["model"]
    )
    with open(run_dir / "case_scores.csv") as f:
        rows = list(csv.DictReader(f))
    val = [r for r in rows if r["split"] == "validation"]
    assert [(r["case"], r["structure"]) for r in val] == [
        ("hippocampus_004", "anterior"),
        ("hippocampus_004", "posterior"),
    ]

    # recompute the validation Dice independently: the saved network on the case's slices,
    # zero-padded to the canvas, cropped back, against the label file on its own grid
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    canvas = tuple(config["slice_canvas"])
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    settings = Settings(
        features=tuple(config["features"]),
        embedding_dim=config["embedding_dim"],
        embedding_hidden=config["embedding_hidden"],
    )
    net, _ = build("md_supcon", ckpt["domain_classes"], settings)
    net.load_state_dict(ckpt["model"])
    image = _scaled(np.asarray(nib.load(_hippo(4)["image"]).dataobj, dtype=np.float64))
    truth = np.asarray(nib.load(_hippo(4)["label"]).dataobj).astype(int)
    padded = [_centred(image[:, :, z], canvas) for z in range(image.shape[2])]
    x = torch.from_numpy(np.stack([p[0] for p in padded])[:, None]).float()
    pred, _ = predict(net, x, 1, torch.device("cpu"))
    top, left = padded[0][1:]
    h, w = image.shape[:2]
    pred = np.moveaxis(pred[:, 0, top : top + h, left : left + w].numpy(), 0, 2)
    assert pred.shape == truth.shape  # the prediction grid is the file's grid
    dice = [
        2 * ((pred == c) & (truth == c)).sum() / ((pred == c).sum() + (truth == c).sum())
        for c in (1, 2)
    ]
    np.testing.assert_allclose([float(r["dice"]) for r in val], dice, rtol=1e-4, atol=1e-6)
    assert metrics["val_dice_domain1"] == pytest.approx(np.mean(dice), rel=1e-4, abs=1e-6)


def test_run_datalist_without_validation_says_so_once_and_bad_input_is_one_sentence(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    def run(path: Path, *args: str) -> tuple[int, str]:
        out = str(tmp_path / "runs")
        code = main(["run", "mr-multidomain", "--data", str(path), *args, *TINY, "--out", out])
        return code, capsys.readouterr().err

    lists = {"domains": [HIPPO_ROW], "training": [_hippo(1)], "test": [_hippo(3)]}
    code, err = run(_write(tmp_path / "noval.json", lists), "--epochs", "1")
    assert code == 0, err
    assert err.count("has no 'validation' list") == 1
    (run_dir,) = (tmp_path / "runs").iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (
        metrics["validation"]
        == f"none: datalist {tmp_path / 'noval.json'} has no 'validation' list"
    )
    assert metrics["cases"]["validation"] == [] and not any(k.startswith("val_") for k in metrics)

    no_labels = {**lists, "domains": [{k: v for k, v in HIPPO_ROW.items() if k != "labels"}]}
    no_test = {k: v for k, v in lists.items() if k != "test"}
    no_test["validation"] = [_hippo(3)]
    cases = {
        "missing.json": (None, "missing.json does not exist"),
        "no_labels.json": (no_labels, "domain 'hippocampus' has no label names"),
        "no_test.json": (no_test, "has no 'test' list"),
        "two_splits.json": (
            {**lists, "validation": [_hippo(1)]},
            "is in both 'training' and 'validation'",
        ),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name if content is None else _write(tmp_path / name, content)
        code, err = run(path)
        assert code == 2 and message in err and err.count("\n") == 1, (name, err)
        assert "Traceback" not in err
    assert len(list((tmp_path / "runs").iterdir())) == 1  # no run folder for the bad ones


def test_selection_keeps_the_weights_of_the_best_validation_score() -> None:
    from monai_ext.multidomain.run import _SelectOnValidation

    class Inner:  # stands in for the run's Checkpointer: records what it is handed
        def __init__(self) -> None:
            self.seen: list[set] = []

        def step(self, step: int, **objects) -> None:
            self.seen.append(set(objects))

    net = torch.nn.Linear(2, 1)
    scores = iter([0.2, 0.7, 0.4, 0.7])  # the best first reached at step 2 (scored every step)
    inner = Inner()
    sel = _SelectOnValidation(inner, every=1, total=4, score=lambda m: next(scores))
    weights = []
    for step in range(1, 5):
        with torch.no_grad():
            net.weight.fill_(float(step))
        weights.append(net.weight.clone())
        sel.step(step, model=net)
    assert sel.best_step == 2 and torch.equal(sel.weights["weight"], weights[1])
    assert inner.seen == [{"model", "selection"}] * 4  # last.ckpt holds the selection too
    every3 = _SelectOnValidation(
        Inner(), every=3, total=4, score=lambda m: float(m.weight.detach().sum())
    )
    for step in range(1, 5):
        with torch.no_grad():
            net.weight.fill_(-float(step))
        every3.step(step, model=net)
    assert every3.best_step == 3  # scored at steps 3 and 4 (the last) only: -6 > -8
