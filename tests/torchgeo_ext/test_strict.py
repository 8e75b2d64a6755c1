"""The strict command for GLCNet: every shipped YAML runs one step, declared options, NaN/inf in
GeoTIFFs, no half-written prediction, safe checkpoint loading, Ctrl-C and resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from plugins.errors import UserInputError

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "torchgeo_ext" / "configs").glob("*.yaml"))

# per config: CPU-sized overrides on top of the data paths (small real data in tmp_path)
_SMALL_MODEL = {
    "GLCNetTask": ["--model.init_args.backbone", "resnet18", "--model.init_args.size", "32",
                   "--model.init_args.patch_size", "3"],
    "GLCNetSegmentationTask": ["--model.init_args.backbone", "resnet18"],
    "SemanticSegmentationTask": ["--model.init_args.backbone", "resnet18"],
}  # fmt: skip


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_shipped_config_runs_one_step(config, request, tmp_path):
    """``torchgeo fit --config <ours> --trainer.fast_dev_run 1`` on small real data."""
    import yaml
    from torchgeo.main import main

    spec = yaml.safe_load(config.read_text())
    data_cls = spec["data"]["class_path"].rsplit(".", 1)[-1]
    model_cls = spec["model"]["class_path"].rsplit(".", 1)[-1]
    if data_cls == "PotsdamPatchDataModule":
        root = request.getfixturevalue("potsdam_root")
        data = ["--data.init_args.patch_size", "48"]
    elif data_cls == "RSSegDataModule":
        root = request.getfixturevalue("rs_seg_small")
        data = ["--data.init_args.patch_size", "32", "--data.init_args.scale", "1.0"]
    elif data_cls == "GeoTiffDataModule":
        folder = request.getfixturevalue("geotiff_folder")
        root = None
        data = [
            "--data.init_args.paths",
            str(folder / "images"),
            "--data.init_args.patch_size",
            "32",
        ]
        if "label_paths" in spec["data"]["init_args"]:
            data += ["--data.init_args.label_paths", str(folder / "labels")]
    else:
        pytest.fail(f"{config.name}: no small data for {data_cls}; add it to this test")
    if "label_fraction" in spec["data"]["init_args"]:  # a fraction of a few windows is one window,
        data += ["--data.init_args.label_fraction", "1.0"]  # and BatchNorm needs two per batch
    args = [
        "fit",
        "--config", str(config),
        "--trainer.fast_dev_run", "1",
        "--trainer.accelerator", "cpu",
        "--trainer.default_root_dir", str(tmp_path / "logs"),
        "--data.init_args.batch_size", "2",
        "--data.init_args.num_workers", "0",
        *(["--data.init_args.root", str(root)] if root is not None else []),
        *data,
        *_SMALL_MODEL[model_cls],
    ]  # fmt: skip
    cwd = os.getcwd()
    os.chdir(tmp_path)  # anything Lightning writes relative to the working folder stays here
    try:
        main(args)  # raises (SystemExit != 0) on any failure
    finally:
        os.chdir(cwd)


def _cli(argv, capsys):
    """``contrastive-plugins ARGV`` in this process: (exit status, stdout, stderr)."""
    from plugins.cli import main

    try:
        code = main([str(a) for a in argv])
    except SystemExit as stop:  # a method's own argument parser (predict METHOD ...)
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(code, err, *needles):
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def write_tif(path: Path, array: np.ndarray, nodata: float | None = None) -> Path:
    import rasterio
    from rasterio.transform import from_origin

    with rasterio.open(
        path, "w", driver="GTiff", width=array.shape[2], height=array.shape[1],
        count=array.shape[0], dtype=array.dtype.name, nodata=nodata,
        transform=from_origin(0, array.shape[1] * 10, 10, 10),
    ) as ds:  # fmt: skip
        ds.write(array)
    return path


@pytest.fixture
def s2_crop(tmp_path) -> Path:
    """A 64x64 crop of the embedded real Sentinel-2 tile (int16, 4 bands) as a GeoTIFF."""
    from torchgeo_ext.data import load_sentinel2_tile

    raw, _ = load_sentinel2_tile()
    return write_tif(tmp_path / "s2_crop.tif", np.ascontiguousarray(raw[:, 100:164, 120:184]))


def _with_nan(tmp_path: Path, name: str, nodata: float | None = None) -> tuple[Path, int, int]:
    """The crop as float32 with 7 NaN pixels (all bands) and 3 inf values: (path, values, pixels)."""
    from torchgeo_ext.data import load_sentinel2_tile

    raw, _ = load_sentinel2_tile()
    x = raw[:, 100:164, 120:184].astype(np.float32)
    x[:, 5, 10:17] = np.nan
    x[2, 40, 3:6] = np.inf
    return write_tif(tmp_path / name, x, nodata=nodata), 4 * 7 + 3, 7 + 3


# ----------------------------------------------------------------------------------------------
# options
# ----------------------------------------------------------------------------------------------


def test_help_lists_every_declared_key_with_its_default(capsys):
    from torchgeo_ext.options import OPTIONS

    for command, options in OPTIONS.items():
        code, out, _ = _cli([command, "glcnet", "--help"], capsys)
        assert code == 0
        listed = out.split(f"--set options of '{command} glcnet'")[1]
        for key in options:
            assert f"  {key}=" in listed
        assert "size=64 (48 with --demo)" in out or command == "reproduce"
    assert {"backbone", "patch_size", "lr", "rgb_bands", "size", "steps", "batch_size",
            "clusters", "bands", "nodata"} == set(OPTIONS["run"])  # fmt: skip
    assert {"backbone", "patch_size", "lr", "finetune_lr", "scale", "source_size", "size",
            "window", "stride", "batch_size", "pretrain_steps", "finetune_steps", "fractions",
            "seeds"} == set(OPTIONS["reproduce"])  # fmt: skip


def test_every_key_the_code_reads_is_declared():
    """Each ``ctx.option("key")`` in run.py names a declared key, and each declared key is read."""
    import re

    from torchgeo_ext.options import OPTIONS

    source = (REPO / "torchgeo_ext" / "run.py").read_text()
    read = set(re.findall(r"ctx\.option(?:_list)?\(\s*\"(\w+)\"", source))
    declared = set(OPTIONS["run"]) | set(OPTIONS["reproduce"])
    assert read == declared


@pytest.mark.parametrize(
    "argv, needles",
    [
        (["--set", "size=40"], ["size=40", "multiple of 16"]),
        (["--set", "sise=32"], ["unknown option --set sise", "did you mean size"]),
        (["--set", "batch_size=abc"], ["batch_size=abc", "integer"]),
        (["--set", "batch_size=1"], ["batch_size=1", "at least 2"]),
        (["--set", "rgb_bands=0,1,7"], ["rgb_bands=0,1,7", "has 4 bands"]),
        (["--set", "backbone=resnet9000"], ["backbone=resnet9000", "smp encoder"]),
        (["--set", "size=96"], ["smaller than the 96-pixel view"]),
        (["--epochs", "0"], ["epochs"]),
    ],
)
def test_run_refuses_bad_options_in_one_line_without_a_run_folder(
    argv, needles, s2_crop, tmp_path, capsys
):
    data = ["--data", s2_crop] if "size=96" in argv or "rgb_bands=0,1,7" in argv else []
    code, _, err = _cli(["run", "glcnet", "--device", "cpu", "--out", tmp_path / "runs",
                         *data, *argv], capsys)  # fmt: skip
    _one_line_error(code, err, *needles)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize(
    "argv, needles",
    [
        (["--epochs", "3"], ["pretrain_steps", "finetune_steps"]),
        (["--set", "stride=64"], ["stride=64", "at most the window (32)"]),
        (["--set", "window=40"], ["window=40", "multiple of 16"]),
        (["--set", "fractions=0.5,2"], ["fractions=0.5,2", "at most 1"]),
        (["--set", "fractions="], ["at least one label fraction"]),
        (["--set", "clusters=3"], ["unknown option --set clusters", "known keys: backbone"]),
    ],
)
def test_reproduce_refuses_bad_options_in_one_line(argv, needles, tmp_path, capsys):
    code, _, err = _cli(["reproduce", "glcnet", "--device", "cpu", "--out", tmp_path / "runs",
                         *argv], capsys)  # fmt: skip
    _one_line_error(code, err, *needles)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


# ----------------------------------------------------------------------------------------------
# NaN / inf in GeoTIFFs: run, predict and the datamodules
# ----------------------------------------------------------------------------------------------


def test_run_on_geotiff_with_nan_is_one_sentence_with_file_and_count(tmp_path, capsys):
    tif, values, pixels = _with_nan(tmp_path, "nan.tif")
    code, _, err = _cli(["run", "glcnet", "--device", "cpu", "--demo", "--data", tif,
                         "--out", tmp_path / "runs"], capsys)  # fmt: skip
    line = _one_line_error(
        code, err, str(tif), f"{values} NaN or infinite values ({pixels} pixels)"
    )
    assert "not declare as nodata" in line
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_declared_nan_nodata_is_respected_by_run(tmp_path, capsys):
    """NaN declared as nodata (issue 21): the run skips it and writes it as the map's nodata."""
    import rasterio

    from torchgeo_ext.data import load_sentinel2_tile

    raw, _ = load_sentinel2_tile()
    x = raw[:, :64, :64].astype(np.float32)
    x[:, 1, :9] = np.nan
    tif = write_tif(tmp_path / "nodata.tif", x, nodata=float("nan"))
    code, out, err = _cli(["run", "glcnet", "--device", "cpu", "--demo", "--data", tif,
                           "--out", tmp_path / "runs", "--set", "clusters=2", "--epochs", "2",
                           "--set", "size=32", "--set", "batch_size=2", "--set",
                           "backbone=tu-tf_mobilenetv3_small_minimal_100"], capsys)  # fmt: skip
    assert code == 0, err
    (run,) = list((tmp_path / "runs").iterdir())
    with rasterio.open(run / "classmap.tif") as ds:
        classes = ds.read(1)
        assert ds.nodata == 255
    assert np.array_equal(classes == 255, np.isnan(x).any(0))
    summary = json.loads((run / "data_summary.json").read_text())
    assert summary["nodata_fraction"] == pytest.approx(9 / 64**2)


def _segmenter_ckpt(tmp_path: Path, in_channels: int = 4, classes: int = 6) -> Path:
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    m = smp.DeepLabV3Plus(
        encoder_name="resnet18", encoder_weights=None, in_channels=in_channels, classes=classes
    )
    hp = {"model": "deeplabv3+", "backbone": "resnet18", "in_channels": in_channels,
          "num_classes": classes}  # fmt: skip
    path = tmp_path / "seg.ckpt"
    torch.save({"hyper_parameters": hp, "classes": ["a", "b", "c", "d", "e", "f"][:classes],
                "state_dict": {f"model.{k}": v for k, v in m.state_dict().items()}}, path)  # fmt: skip
    return path


def _predict_args(ckpt, src, out, *extra):
    return ["--checkpoint", str(ckpt), str(src), str(out), "--window", "64", "--stride", "64",
            "--block", "32", "--device", "cpu", *extra]  # fmt: skip


def test_predict_on_nan_counts_the_whole_raster_and_writes_nothing(tmp_path):
    from torchgeo_ext.predict import main

    tif, values, pixels = _with_nan(tmp_path, "nan.tif")
    out = tmp_path / "out" / "pred.tif"
    # blocks of 32: the NaN row is in the first block, the inf values in a later one
    with pytest.raises(UserInputError) as err:
        main(_predict_args(_segmenter_ckpt(tmp_path), tif, out))
    assert str(tif) in str(err.value)
    assert f"{values} NaN or infinite values ({pixels} pixels)" in str(err.value)
    assert list((tmp_path / "out").iterdir()) == []  # no output, no temporary file


def test_potsdam_datamodule_refuses_float_tile_with_nan(potsdam_root):
    from torchgeo_ext.data import PotsdamPatchDataModule

    tif = potsdam_root / "4_Ortho_RGBIR" / "top_potsdam_2_11_RGBIR.tif"
    import rasterio

    with rasterio.open(tif) as ds:
        x = ds.read().astype(np.float32) / 255
    x[:, 3, :4] = np.nan
    write_tif(tif, x)
    dm = PotsdamPatchDataModule(str(potsdam_root), patch_size=32, val_tiles=1)
    with pytest.raises(UserInputError, match=r"top_potsdam_2_11_RGBIR.tif contains 16 NaN or "
                       r"infinite values \(4 pixels\)"):  # fmt: skip
        dm.setup()


def test_array_crops_refuse_nan_and_do_not_depend_on_the_global_rng():
    from torchgeo_ext.data import ArrayCropDataset

    x = np.random.default_rng(0).random((3, 40, 40)).astype(np.float32)
    torch.manual_seed(1)
    a = ArrayCropDataset(x, 16, 10, seed=5)
    first = [a[i]["image"] for i in (9, 0)]
    torch.manual_seed(2)
    b = ArrayCropDataset(x, 16, 10, seed=5)
    assert all(torch.equal(u, b[i]["image"]) for u, i in zip(first, (9, 0)))
    x[1, 2, 3] = np.nan
    with pytest.raises(UserInputError, match="scene.tif contains 1 NaN"):
        ArrayCropDataset(x, 16, 10, what="scene.tif")


# ----------------------------------------------------------------------------------------------
# predict: no half-written output, help, legend; safe checkpoint loading
# ----------------------------------------------------------------------------------------------


def test_truncated_geotiff_leaves_no_output(tmp_path, s2_crop):
    from torchgeo_ext.predict import main

    src = s2_crop
    data = src.read_bytes()
    bad = tmp_path / "truncated.tif"
    bad.write_bytes(data[: len(data) * 2 // 3])
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(UserInputError, match="truncated.tif is corrupt: reading rows"):
        main(_predict_args(_segmenter_ckpt(tmp_path), bad, out_dir / "pred.tif"))
    assert list(out_dir.iterdir()) == []
    # the intact file predicts, and an earlier output is replaced only when the new one is complete
    assert main(_predict_args(_segmenter_ckpt(tmp_path), src, out_dir / "pred.tif")) == 0
    assert sorted(p.name for p in out_dir.iterdir()) == ["pred.png", "pred.tif"]
    before = (out_dir / "pred.tif").read_bytes()
    with pytest.raises(UserInputError):
        main(_predict_args(_segmenter_ckpt(tmp_path), bad, out_dir / "pred.tif"))
    assert (out_dir / "pred.tif").read_bytes() == before
    assert sorted(p.name for p in out_dir.iterdir()) == ["pred.png", "pred.tif"]


def test_predict_help_documents_every_argument(capsys):
    from torchgeo_ext.predict import build_parser

    for action in build_parser()._actions:
        assert action.help and action.help.strip(), action.dest
    code, out, _ = _cli(["predict", "glcnet", "--help"], capsys)
    assert code == 0
    for flag in ("--checkpoint", "--window", "--stride", "--block", "--device", "input", "output"):
        assert flag in out
    assert "multiple of 16" in out and "1 to --window" in out and "legend" in out


def test_predict_bad_arguments_are_one_line(tmp_path, s2_crop, capsys):
    ckpt = _segmenter_ckpt(tmp_path)
    out = tmp_path / "o.tif"
    for extra, needle in [(["--window", "40"], "multiple of 16"),
                          (["--window", "64", "--stride", "0"], "at least 1"),
                          (["--window", "64", "--stride", "128"], "--stride must be in 1..--window"),
                          (["--window", "abc"], "whole number"),
                          (["--device", "tpu"], "expected cpu, cuda or cuda:N")]:  # fmt: skip
        code, _, err = _cli(
            ["predict", "glcnet", "--checkpoint", ckpt, s2_crop, out, *extra], capsys
        )
        _one_line_error(code, err, needle)
    assert not out.exists()


def test_preview_has_a_legend_naming_each_class(tmp_path, s2_crop, monkeypatch):
    import plugins.reporting as reporting
    from torchgeo_ext.predict import main

    figures = []
    original = reporting.class_map_figure

    def spy(*args, **kwargs):
        figures.append(original(*args, **kwargs))
        return figures[-1]

    monkeypatch.setattr(reporting, "class_map_figure", spy)
    out = tmp_path / "pred.tif"
    assert main(_predict_args(_segmenter_ckpt(tmp_path), s2_crop, out)) == 0
    assert out.with_suffix(".png").stat().st_size > 1000
    (fig,) = figures
    legend = fig.axes[-1].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["a", "b", "c", "d", "e", "f"]


def test_foreign_and_corrupt_checkpoints_are_one_sentence(tmp_path, s2_crop):
    from torch import nn

    from torchgeo_ext.export import export_encoder
    from torchgeo_ext.predict import load_segmenter

    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(_segmenter_ckpt(tmp_path).read_bytes()[:5000])
    pickled = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}, "model": nn.Linear(2, 2)}, pickled)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"weights": [1, 2, 3], "note": "not ours"}, foreign)
    misfit = tmp_path / "misfit.ckpt"
    seg = torch.load(_segmenter_ckpt(tmp_path, classes=3), weights_only=True)
    seg["hyper_parameters"]["num_classes"] = 5  # head weights of 3 classes
    torch.save(seg, misfit)
    cases = [
        (corrupt, "truncated or corrupt"),
        (pickled, "arbitrary Python objects"),
        (foreign, "not a segmentation checkpoint"),
        (misfit, "does not hold a model this command can build"),
        (tmp_path / "missing.ckpt", "does not exist"),
    ]
    for path, needle in cases:
        with pytest.raises(UserInputError) as err:
            load_segmenter(path)
        text = str(err.value)
        assert str(path) in text and needle in text and "\n" not in text
    for path, needle in [(corrupt, "truncated or corrupt"), (pickled, "arbitrary Python"),
                         (foreign, "holds no state dict")]:  # fmt: skip
        with pytest.raises(UserInputError, match=needle):
            export_encoder(path, tmp_path / "enc.ckpt")
    assert not (tmp_path / "enc.ckpt").exists()
    done = subprocess.run(
        [sys.executable, "-m", "torchgeo_ext.export", str(corrupt), str(tmp_path / "enc.ckpt")],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    _one_line_error(done.returncode, done.stderr, str(corrupt), "truncated or corrupt")


# ----------------------------------------------------------------------------------------------
# Ctrl-C, periodic checkpoints and --resume (the kill test)
# ----------------------------------------------------------------------------------------------

_STEPS, _KILL_AT = 6, 3
# a few seconds of CPU training on a 64x64 crop of the real Sentinel-2 tile, with the smallest smp
# encoder (the resume machinery does not depend on the backbone; resnet18 steps are 2x slower)
_KILL_ARGS = ["run", "glcnet", "--demo", "--device", "cpu", "--no-progress", "--threads", "1",
              "--epochs", str(_STEPS), "--set", "size=32", "--set", "batch_size=2",
              "--set", "clusters=2", "--set", "backbone=tu-tf_mobilenetv3_small_minimal_100"]  # fmt: skip


def _run_folder(out: Path) -> Path:
    (folder,) = list(out.iterdir())
    return folder


def test_sigint_exits_130_keeps_last_ckpt_and_resume_equals_uninterrupted(tmp_path, s2_crop):
    """SIGINT to a training subprocess once its periodic checkpoint reaches step 3 of 6: exit 130,
    status interrupted, a loadable last.ckpt; resuming from it gives bit-identical final weights
    and losses to an uninterrupted run (which runs in this process while the subprocess starts)."""
    from concurrent.futures import ThreadPoolExecutor

    from plugins.checkpoint import load_checkpoint
    from plugins.cli import main
    from plugins.testing import interrupt_cli_run

    args = [*_KILL_ARGS, "--data", str(s2_crop)]
    killed = tmp_path / "killed"
    with ThreadPoolExecutor(1) as pool:  # the subprocess runs in a thread, the reference here
        cut = pool.submit(
            interrupt_cli_run, [*args, "--out", str(killed), "--checkpoint-every", "1"], killed,
            min_step=_KILL_AT, cwd=tmp_path, env={"PYTHONUNBUFFERED": "1"}, timeout=180,
        )  # fmt: skip
        assert main([*args, "--out", str(tmp_path / "full")]) == 0  # meanwhile: uninterrupted
        cut = cut.result()
    output = cut.stdout + cut.stderr
    assert cut.returncode == 130, output[-3000:]
    assert "Traceback" not in output
    run = _run_folder(killed)
    assert json.loads((run / "metrics.json").read_text())["status"] == "interrupted"
    saved = load_checkpoint(run / "last.ckpt", "glcnet")
    done = saved["global_step"]
    assert saved["method"] == "glcnet" and _KILL_AT <= done < _STEPS  # interrupted mid-training
    assert len(saved["callbacks"]["LossRecorder"]["losses"]) == done
    assert not list(run.glob("*.tmp")) and not (run / "glcnet.ckpt").exists()

    # other settings than the checkpoint's: one sentence, nothing trained
    code = main([*args, "--set", "lr=0.01", "--out", str(tmp_path / "other"), "--resume",
                 str(run / "last.ckpt")])  # fmt: skip
    assert code == 2 and not any((tmp_path / "other").glob("*"))

    assert main([*args, "--out", str(tmp_path / "resumed"), "--resume",
                 str(run / "last.ckpt")]) == 0  # fmt: skip
    resumed, full = _run_folder(tmp_path / "resumed"), _run_folder(tmp_path / "full")
    a = load_checkpoint(resumed / "glcnet.ckpt")["state_dict"]
    b = load_checkpoint(full / "glcnet.ckpt")["state_dict"]
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    ma = json.loads((resumed / "metrics.json").read_text())
    mb = json.loads((full / "metrics.json").read_text())
    assert ma["final_loss"] == mb["final_loss"] and ma["first_loss"] == mb["first_loss"]
    assert ma["status"] == mb["status"] == "completed"


def test_resume_refuses_another_methods_file(tmp_path, s2_crop, capsys):
    other = tmp_path / "other.ckpt"
    torch.save({"format": "contrastive-plugins/training-state/1", "method": "simclr"}, other)
    code, _, err = _cli([*_KILL_ARGS, "--data", s2_crop, "--out", tmp_path / "runs",
                         "--resume", other], capsys)  # fmt: skip
    _one_line_error(code, err, str(other), "written by method 'simclr'")
    assert not (tmp_path / "runs").exists()
