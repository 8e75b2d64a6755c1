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


pytestmark = pytest.mark.usefixtures("one_thread")


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


# -- every config on real photographs (no shared data needed), and one-sentence errors -------------
def _photo_folder(root: Path, per_class: int = 8, side: int = 40) -> Path:
    """Class-per-folder JPEGs cut from scikit-learn's two sample photographs (real images)."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    for name, img in zip(("china", "flower"), load_sample_images().images):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            y, x = divmod(i, 4)
            patch = img[30 + 90 * y : 30 + 90 * y + side, 40 + 140 * x : 40 + 140 * x + side]
            Image.fromarray(np.ascontiguousarray(patch)).save(root / name / f"{name}_{i}.jpg")
    return root


def _common(root: Path) -> dict:
    return {"meta_file": META, "bundle_root": str(root), **SMALL}


def test_every_config_runs_and_stage2_saves_a_model_whatever_val_interval(tmp_path):
    """Each YAML/JSON config of the bundle parses and runs: stage 1 (one epoch), stage 2 with one
    epoch and ``val_interval`` 5 (validation runs at the last epoch, so ``model.pt`` exists), and
    inference."""
    import json

    from monai.bundle import run

    meta = json.loads(Path(META).read_text())
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == 2
    assert {p.name for p in CONFIGS.iterdir()} == {
        "metadata.json", "train_stage1.yaml", "train_stage2.yaml", "inference.yaml",
        "evaluate.yaml", "multi_gpu_train.yaml",  # the last under torchrun: test_multi_gpu_train.py
    }  # fmt: skip
    _photo_folder(tmp_path / "data")
    common = _common(tmp_path)
    run(config_file=str(CONFIGS / "train_stage1.yaml"), max_epochs=1, **common)
    stage1 = torch.load(tmp_path / "models" / "stage1.pt", map_location="cpu", weights_only=True)
    run(
        config_file=str(CONFIGS / "train_stage2.yaml"), max_epochs=1, val_interval=5, lr=0.05,
        **common,
    )  # fmt: skip
    model = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    model, stage1 = model.get("model", model), stage1.get("model", stage1)
    assert not torch.equal(model["classifier.weight"], stage1["classifier.weight"])
    assert torch.equal(model["encoder.stem.0.weight"], stage1["encoder.stem.0.weight"])

    out = tmp_path / "eval" / "probabilities.csv"
    run(
        config_file=str(CONFIGS / "inference.yaml"), output_csv=str(out),
        class_names=["china", "flower"], **common,
    )  # fmt: skip
    with out.open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["image", "china", "flower"] and len(rows) == 1 + 16
    probs = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)
    assert not list(out.parent.glob(".*.tmp"))  # written under a temporary name, then renamed

    # evaluate: the same folder as the "held-out" list -- every test file is flagged as a copy
    run(
        config_file=str(CONFIGS / "evaluate.yaml"), test_data=str(tmp_path / "data"),
        class_names=["china", "flower"], positive="flower", **common,
    )  # fmt: skip
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["positive_class"] == "flower" and metrics["test_files_also_in_data"] == 16


@pytest.mark.parametrize(
    "config, override, needle",
    [
        (
            "train_stage1.yaml",
            {"max_epochs": 0},
            "max_epochs must be an integer of at least 1, got 0",
        ),
        ("train_stage1.yaml", {"batch_size": 1}, "batch_size must be an integer of at least 2"),
        ("train_stage1.yaml", {"balanced": "maybe"}, "balanced must be true or false, got 'maybe'"),
        ("train_stage1.yaml", {"data_dir": "/nonexistent/isic"}, "data_dir does not exist"),
        ("train_stage1.yaml", {"num_classes": 3}, "num_classes is 3 but the data has 2 classes"),
        ("train_stage1.yaml", {"val_fraction": 1.5}, "val_fraction must be a number from 0.01"),
        (
            "train_stage2.yaml",
            {"encoder_mode": "frozen"},
            "encoder_mode must be one of eval, train",
        ),
        ("train_stage2.yaml", {"lr": "fast"}, "lr must be a number of at least 0, got 'fast'"),
        ("train_stage2.yaml", {}, "stage1_ckpt"),
        ("inference.yaml", {"arch": "vgg16"}, "arch must be resnet50"),
        ("inference.yaml", {"class_names": ["a"]}, "class_names must list num_classes (2) names"),
        ("inference.yaml", {}, "ckpt_path"),
        ("evaluate.yaml", {"test_data": "/nonexistent/test.json"}, "test_data does not exist"),
        ("evaluate.yaml", {"min_val_positives": 0}, "min_val_positives must be an integer of"),
    ],
)
def test_config_errors_name_the_file_and_the_key(tmp_path, config, override, needle):
    from monai.bundle import run

    from monai_ext.supercon.bundle import user_error

    _photo_folder(tmp_path / "data", per_class=6)
    with pytest.raises(Exception) as info:
        run(config_file=str(CONFIGS / config), **{**_common(tmp_path), **override})
    err = user_error(info.value)
    assert err is not None, info.value
    message = str(err)
    assert message.startswith(f"configs/{config}: ") and needle in message
    key = next(iter(override), needle)
    assert key in message and len(message.splitlines()) == 1


def test_checkpoint_that_does_not_fit_names_the_key(tmp_path):
    from monai.bundle import run

    from monai_ext.supercon.bundle import user_error
    from monai_ext.supercon.model import SuperConNet

    _photo_folder(tmp_path / "data", per_class=6)
    (tmp_path / "models").mkdir()
    torch.save(SuperConNet(5, "micro").state_dict(), tmp_path / "models" / "model.pt")
    with pytest.raises(Exception) as info:
        run(config_file=str(CONFIGS / "inference.yaml"), **_common(tmp_path))
    message = str(user_error(info.value))
    assert message.startswith("configs/inference.yaml: ckpt_path ")
    assert "does not fit the network" in message and "classifier.weight" in message


def test_read_imaged_names_truncated_and_nan_files(tmp_path):
    from PIL import Image

    from monai_ext.supercon.bundle import ReadImaged
    from plugins.errors import UserInputError

    folder = _photo_folder(tmp_path / "data", per_class=1)
    load = ReadImaged(keys="image", reader="PILReader", reverse_indexing=False, image_only=True)
    assert load({"image": str(folder / "china" / "china_0.jpg")})["image"].shape == (40, 40, 3)
    cut = folder / "flower" / "flower_0.jpg"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    with pytest.raises(UserInputError, match=rf"^image {cut} is truncated or unreadable \("):
        load({"image": str(cut)})
    pixels = np.ones((10, 10), np.float32)
    pixels[2, :5] = np.nan
    tif = tmp_path / "nan.tif"
    Image.fromarray(pixels, mode="F").save(tif)
    with pytest.raises(UserInputError, match=rf"^image {tif} contains 5 NaN or infinite values"):
        load({"image": str(tif)})


def test_bundle_booleans_accept_command_line_words():
    from monai_ext.supercon.bundle import make_sampler

    items = [{"label": 0}, {"label": 1}, {"label": 1}]
    assert make_sampler(items, "false") is None and make_sampler(items, False) is None
    assert make_sampler(items, "true") is not None


def test_inference_on_a_truncated_jpeg_is_one_line_naming_it(tmp_path):
    """``python -m monai.bundle run`` as a user types it: one line, not MONAI's traceback."""
    from monai_ext.supercon.model import SuperConNet

    images = _photo_folder(tmp_path / "images", per_class=2)
    cut = images / "china" / "china_1.jpg"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    (tmp_path / "models").mkdir()
    torch.save(SuperConNet(2, "micro").state_dict(), tmp_path / "models" / "model.pt")
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file"]
    cmd += [str(CONFIGS / "inference.yaml"), "--meta_file", META, "--bundle_root", str(tmp_path)]
    cmd += ["--image_dir", str(images)] + [f"--{k}={v}" for k, v in SMALL.items()]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, done.stderr[-3000:]
    assert errors[0].startswith(f"supercon_skin: error: image {cut} is truncated or unreadable (")
    assert not (tmp_path / "eval" / "probabilities.csv").exists()


def test_evaluate_config_scores_a_held_out_test_list_at_the_validation_threshold(tmp_path, capsys):
    """``configs/evaluate.yaml`` through ``monai.bundle.run``: the threshold comes from
    the validation split of ``data_dir`` and is applied to a held-out test datalist (JSON)."""
    import json

    from monai.bundle import run

    root = _isic_folder(tmp_path)
    common = {"meta_file": META, "bundle_root": str(root), **SMALL}
    run(config_file=str(CONFIGS / "train_stage1.yaml"), max_epochs=1, **common)
    run(config_file=str(CONFIGS / "train_stage2.yaml"), max_epochs=1, lr=0.05, **common)
    # a held-out test list: other shared ISIC images, named relative to the JSON file
    src = shared_path("isic")
    test_dir = tmp_path / "held_out"
    test_dir.mkdir()
    with (src / "labels.csv").open() as f:
        clean = [r for r in csv.DictReader(f) if r["clean"] == "1"]
    items = []
    for target, name in ((1, "melanoma"), (0, "nevus")):
        for r in [r for r in clean if r["folder_label"] == name][8:13]:  # not in data_dir
            shutil.copy(src / r["path"], test_dir / f"{r['image_id']}.jpg")
            items.append({"image": f"{r['image_id']}.jpg", "label": target})
    (test_dir / "test.json").write_text(json.dumps({"test": items}))
    out = root / "eval"
    run(
        config_file=str(CONFIGS / "evaluate.yaml"),
        test_data=str(test_dir / "test.json"),
        output_dir=str(out),
        **common,
    )
    with (out / "predictions.csv").open() as f:
        preds = list(csv.DictReader(f))
    assert list(preds[0]) == ["path", "group", "label", "p_other", "p_melanoma", "split"]
    val = [p for p in preds if p["split"] == "validation"]
    test = [p for p in preds if p["split"] == "test"]
    lists = bundle_datalists(root / "data", val_fraction=0.2, seed=0)
    assert sorted(p["path"] for p in val) == sorted(i["image"] for i in lists["validation"])
    assert len(test) == 10 and sum(p["label"] == "melanoma" for p in test) == 5
    m = json.loads((out / "metrics.json").read_text())
    val_pos = sum(p["label"] == "melanoma" for p in val)
    assert m["positive_class"] == "melanoma" and m["threshold_positives"] == val_pos
    assert m["test_images"] == 10 and m["test_files_also_in_data"] == 0
    # the threshold is the F1-optimal one on the validation rows, applied to the test rows
    from plugins.metrics import f1_optimal_threshold

    t = f1_optimal_threshold(
        np.array([float(p["p_melanoma"]) for p in val]),
        np.array([p["label"] == "melanoma" for p in val]),
    )
    assert m["threshold"] == pytest.approx(t, abs=1e-5)
    called = sum(float(p["p_melanoma"]) >= t - 1e-6 for p in test)
    assert m["positive_predicted_at_threshold"] == called
    # fewer than min_val_positives=20 validation positives: a warning line
    assert "supercon: warning: the threshold rests on" in capsys.readouterr().err


@pytest.mark.parametrize(
    "config, override, says",
    [
        ("train_stage1.yaml", {"max_epoch": 3}, "--max_epoch names no key 'max_epoch'"),
        ("train_stage1.yaml", {"max_epoch": 3}, "(did you mean 'max_epochs'?)"),
        ("inference.yaml", {"clas_names": ["a", "b"]}, "(did you mean 'class_names'?)"),
    ],
)
def test_a_misspelled_override_is_refused_not_ignored(tmp_path, config, override, says):
    """``--max_epoch 3`` would add a key nothing reads and train for the file's max_epochs."""
    from monai.bundle import run

    from monai_ext.supercon.bundle import user_error

    _photo_folder(tmp_path / "data", per_class=6)
    with pytest.raises(Exception) as info:
        run(config_file=str(CONFIGS / config), **{**_common(tmp_path), **override})
    err = user_error(info.value)
    assert err is not None, info.value
    assert str(err).startswith(f"{config}: override --") and says in str(err)
    assert len(str(err).splitlines()) == 1
