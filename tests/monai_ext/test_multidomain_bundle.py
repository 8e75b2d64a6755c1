"""The MONAI bundle ``multidomain_mr_seg``: train, inference (NIfTI with the input's affine), verify."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_ext.multidomain.bundle import bundle_dir
from monai_ext.multidomain.data import validate_datalist
from plugins.checkpoint import load_checkpoint
from plugins.errors import UserInputError

pytestmark = pytest.mark.usefixtures("one_thread")


CONFIGS = bundle_dir() / "configs"
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
    # the domain table the bundle reads (monai_ext.multidomain.domains)
    lists["domains"] = [
        {"name": f"d{d}", "labels": [f"c{c}" for c in range(nc)], "spacing": [2.0, 2.0, 2.0],
         "roi": [64, 64]}
        for d, nc in enumerate([3, 5])
    ]  # fmt: skip
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
    state = load_checkpoint(ckpt)
    net = MultiDomainUNet(2, 1, [3, 5], **TINY_KW)
    net.load_state_dict(state["model"])  # the saved weights are the multi-domain network's
    # make each head predict its last class everywhere: the output then shows which head ran
    with torch.no_grad():
        for head in net.heads:
            head.weight.zero_()
            head.bias.zero_()
            head.bias[-1] = 10.0
    torch.save({**state, "model": net.state_dict()}, ckpt)
    out = root / "pred"
    run(  # the network is rebuilt from the checkpoint: no override beyond data paths
        config_file=str(CONFIGS / "inference.yaml"),
        meta_file=str(CONFIGS / "metadata.json"),
        bundle_root=str(root),
        datalist=str(datalist),
        output_dir=str(out),
    )
    for d, last in ((0, 2), (1, 4)):
        src = nib.load(datalist.parent / f"d{d}_3_img.nii.gz")
        seg = nib.load(out / f"d{d}_3_img_seg.nii.gz")
        assert seg.shape == src.shape
        np.testing.assert_allclose(seg.affine, src.affine, atol=1e-5)
        assert np.unique(np.asarray(seg.dataobj)).tolist() == [last]


def _card_checkpoint(path: Path) -> Path:
    """A checkpoint as train.yaml writes it: weights and the card (table, network settings)."""
    from monai_ext.multidomain.domains import DomainRow, ModelCard
    from monai_ext.multidomain.model import MultiDomainUNet

    net = MultiDomainUNet(2, 1, [3, 5], **TINY_KW)
    table = [
        DomainRow(f"d{d}", tuple(f"c{c}" for c in range(n)), (2.0, 2.0, 2.0), (64, 64))
        for d, n in enumerate([3, 5])
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"model": net.state_dict(), "card": ModelCard(table, net.settings).state_dict()}, path
    )
    return path


def test_verify_net_in_out(tmp_path: Path) -> None:
    from monai.bundle import verify_net_in_out

    verify_net_in_out(
        net_id="network_def",
        meta_file=str(CONFIGS / "metadata.json"),
        config_file=str(CONFIGS / "inference.yaml"),
        device="cpu",
        n=2,
        ckpt_path=str(_card_checkpoint(tmp_path / "model.pt")),
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
        "--ckpt_path",
        str(tmp_path / "models" / "model.pt"),
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


def _user_error(err: BaseException) -> UserInputError:
    """The UserInputError MONAI's config parser wrapped (``RuntimeError: Failed to evaluate``)."""
    cause: BaseException | None = err
    while cause is not None and not isinstance(cause, UserInputError):
        cause = cause.__cause__ or cause.__context__
    assert cause is not None, f"no UserInputError behind {err!r}"
    return cause


def test_bundle_saves_a_model_when_max_epochs_is_below_val_interval(
    tiny_bundle: tuple[Path, Path], tmp_path: Path
) -> None:
    """``--max_epochs 1`` with the default ``val_interval: 5`` validates after the last epoch, so
    ``models/model.pt`` exists and the documented inference command then works."""
    import yaml
    from monai.bundle import run

    _, datalist = tiny_bundle
    assert yaml.safe_load((CONFIGS / "train.yaml").read_text())["val_interval"] == 5
    kw = _train_kwargs(tmp_path, datalist)
    del kw["val_interval"]  # the config's default
    run(**kw)
    assert (tmp_path / "models" / "model.pt").is_file()
    assert len(load_checkpoint(tmp_path / "models" / "model.pt")) > 0
    run(  # the README's inference command: default output_dir <bundle_root>/eval, the test list
        config_file=str(CONFIGS / "inference.yaml"),
        meta_file=str(CONFIGS / "metadata.json"),
        bundle_root=str(tmp_path),
        datalist=str(datalist),
        datalist_key="test",
    )
    for d in (0, 1):
        seg = nib.load(tmp_path / "eval" / f"d{d}_3_img_seg.nii.gz")
        assert seg.shape == nib.load(datalist.parent / f"d{d}_3_img.nii.gz").shape


def test_validation_is_due_every_interval_and_at_the_last_epoch() -> None:
    from types import SimpleNamespace

    from monai_ext.multidomain.bundle import ValidateEveryAndAtEnd

    handler = ValidateEveryAndAtEnd(validator=None, interval=5)
    engine = SimpleNamespace(state=SimpleNamespace(max_epochs=12))
    assert [e for e in range(1, 13) if handler.due(engine, e)] == [5, 10, 12]
    engine.state.max_epochs = 1
    assert handler.due(engine, 1)
    with pytest.raises(UserInputError, match="val_interval must be at least 1"):
        ValidateEveryAndAtEnd(validator=None, interval=0)


def test_every_bundle_config_parses_and_is_run_by_the_tests() -> None:
    """Each file under configs/ parses; train.yaml and inference.yaml run in the tests above (with
    metadata.json as their meta file), so a new config must be added here and run too."""
    from monai.bundle import ConfigParser

    files = sorted(p.name for p in CONFIGS.iterdir())
    assert files == ["evaluate.yaml", "inference.yaml", "metadata.json", "multi_gpu_train.yaml",
                     "train.yaml"]  # fmt: skip
    for name in files:
        content = ConfigParser.load_config_file(CONFIGS / name)
        assert isinstance(content, dict) and content, name
    assert "run" in ConfigParser.load_config_file(CONFIGS / "train.yaml")
    assert "run" in ConfigParser.load_config_file(CONFIGS / "inference.yaml")
    # evaluate.yaml runs in test_multidomain_domains.py (real spine and hippocampus data)
    assert "run" in ConfigParser.load_config_file(CONFIGS / "evaluate.yaml")


def test_bundle_config_errors_name_the_file_and_the_key(
    tiny_bundle: tuple[Path, Path], tmp_path: Path
) -> None:
    from monai.bundle import run

    _, datalist = tiny_bundle
    base = _train_kwargs(tmp_path / "b", datalist)
    cases = [
        ({"max_epoch": 1}, r"train.yaml: override --max_epoch names no key 'max_epoch' at the "
         r"top level \(did you mean 'max_epochs'\?\)"),
        ({"train#trainer#max_epoch": 1}, r"train.yaml: override --train#trainer#max_epoch: "
         r"SupervisedTrainer at train::trainer takes no argument 'max_epoch'"),
        ({"max_epochs": 0}, r"train.yaml: max_epochs must be a whole number of at least 1, got 0"),
        ({"datalist": str(tmp_path / "nope.json")}, r"train.yaml: datalist \S+nope.json does not "
         r"exist: expected a MONAI datalist JSON"),
    ]  # fmt: skip
    for override, message in cases:
        with pytest.raises(Exception) as info:
            run(**{**base, **override})
        assert re.search(message, str(_user_error(info.value))), str(_user_error(info.value))
    # an edited copy of the config that lost a key the others refer to
    edited = tmp_path / "my_train.yaml"
    text = (CONFIGS / "train.yaml").read_text()
    edited.write_text(text.replace("\nlr: 0.001\n", "\nlearning_rate: 0.001\n"))
    with pytest.raises(Exception) as info:
        run(**{**base, "config_file": str(edited)})
    assert "my_train.yaml: 'optimizer::lr' refers to '@lr', which the config does not define" in (
        str(_user_error(info.value))
    )
    bad = tmp_path / "bad.json"
    domains = json.loads(datalist.read_text())["domains"]
    bad.write_text(
        json.dumps({"domains": domains, "training": [{"image": "a.nii.gz", "domain": 0}]})
    )
    with pytest.raises(Exception) as info:
        run(**{**base, "datalist": str(bad)})
    assert str(_user_error(info.value)) == (
        f"train.yaml: datalist {bad}: item 0 of 'training' has no 'label' key "
        "(expected image, label, domain)."
    )
    assert not (tmp_path / "b" / "models" / "model.pt").exists()


def _nan_copy(datalist: Path, out: Path, split: str) -> Path:
    """A datalist whose first ``split`` image holds 3 NaN and 1 inf voxels (one split: a subject
    in two splits is refused before any image is read)."""
    img = nib.load(datalist.parent / "d0_0_img.nii.gz")
    x = np.asarray(img.dataobj, dtype=np.float32).copy()
    x[0, 0, :3] = np.nan
    x[1, 1, 1] = np.inf
    nib.save(nib.Nifti1Image(x, img.affine), datalist.parent / "nan_img.nii.gz")
    lists = json.loads(datalist.read_text())
    lists[split][0]["image"] = "nan_img.nii.gz"
    out.write_text(json.dumps(lists))
    return out


def test_nan_volumes_are_refused_with_the_file_and_the_count(
    tiny_bundle: tuple[Path, Path], tmp_path: Path
) -> None:
    from monai.bundle import run
    from monai.transforms import LoadImaged

    from monai_ext.multidomain.bundle import CheckFinited

    _, datalist = tiny_bundle
    nan_list = _nan_copy(datalist, datalist.parent / "nan.json", "training")
    nan_test = _nan_copy(datalist, datalist.parent / "nan_test.json", "test")
    expected = f"{datalist.parent / 'nan_img.nii.gz'} contains 4 NaN or infinite voxels"
    train = _train_kwargs(tmp_path, nan_list)
    infer = {
        "config_file": str(CONFIGS / "inference.yaml"),
        "meta_file": str(CONFIGS / "metadata.json"),
        "bundle_root": str(tmp_path),
        "datalist": str(nan_test),
    }
    _card_checkpoint(tmp_path / "models" / "model.pt")  # inference reads the table from it first
    for kw in (train, infer):
        with pytest.raises(Exception) as info:
            run(**kw)
        assert str(_user_error(info.value)).startswith(expected), kw["config_file"]
    # the transform in both configs' pipelines, for items that skip the datalist check
    load = LoadImaged("image", reader="NibabelReader", image_only=True)
    item = load({"image": str(datalist.parent / "nan_img.nii.gz")})
    with pytest.raises(UserInputError, match=re.escape(expected)):
        CheckFinited("image")(item)
    assert CheckFinited("image")(load({"image": str(datalist.parent / "d0_1_img.nii.gz")}))


def test_a_bad_domain_table_is_refused_before_anything_is_written(
    tiny_bundle: tuple[Path, Path], tmp_path: Path
) -> None:
    from monai.bundle import run

    _, datalist = tiny_bundle
    lists = json.loads(datalist.read_text())
    lists["domains"][1]["slice_axis"] = 3
    for key in ("training", "validation", "test"):  # absolute paths: the copy lives elsewhere
        for item in lists[key]:
            for k in ("image", "label"):
                item[k] = str(datalist.parent / item[k])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(lists))
    root = tmp_path / "bundle"
    with pytest.raises(Exception) as info:
        run(**_train_kwargs(root, bad))
    assert str(_user_error(info.value)).endswith(
        "domain 'd1': 'slice_axis' must be 0, 1 or 2 (the axis of the RAS-reoriented volume "
        "that indexes the slices; 2, axial, by default), got 3."
    )
    assert not root.exists()  # no models/ or eval/ folder left behind


def test_command_line_errors_print_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Under ``python -m monai.bundle`` (argv[0] is its __main__.py) the hook check_config installs
    turns MONAI's wrapped UserInputError into one line and status 2; other errors keep their
    traceback (the slow test below runs the real command)."""
    from monai_ext.multidomain import bundle

    monkeypatch.setattr(sys, "argv", [os.path.join("x", "monai", "bundle", "__main__.py")])
    seen = []
    monkeypatch.setattr(sys, "excepthook", lambda *a: seen.append(a))
    monkeypatch.setattr(os, "_exit", lambda code: seen.append(code))
    bundle._one_line_errors()
    try:
        try:
            raise UserInputError("train.yaml: datalist x does not exist.")
        except UserInputError as e:
            raise RuntimeError("Failed to evaluate ConfigExpression") from e
    except RuntimeError as err:
        sys.excepthook(RuntimeError, err, err.__traceback__)
    assert seen == [2]
    assert (
        capsys.readouterr().err == "monai.bundle: error: train.yaml: datalist x does not exist.\n"
    )
    other = ValueError("a bug")
    sys.excepthook(ValueError, other, None)
    assert seen[-1] == (ValueError, other, None)  # left to the previous hook


@pytest.mark.slow
def test_bundle_command_line_error_is_one_line_with_status_2(tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str(CONFIGS / "train.yaml"),
    ]
    cmd += ["--meta_file", str(CONFIGS / "metadata.json"), "--bundle_root", str(tmp_path)]
    cmd += ["--datalist", str(tmp_path / "x.npz")]
    (tmp_path / "x.npz").write_bytes(b"PK\x03\x04\x00\xff\xfe binary")
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        f"monai.bundle: error: train.yaml: datalist {tmp_path / 'x.npz'} is a binary file (.npz): "
        "expected a MONAI datalist JSON (.json) with 'training'/'validation'/'test' lists of "
        '{"image": "x.nii.gz", "label": "x_seg.nii.gz", "domain": k} items (NIfTI .nii/.nii.gz).'
    )
