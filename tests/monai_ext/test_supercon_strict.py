"""SuperCon under the strict command: declared ``--set`` options, periodic checkpoints and
``--resume`` across both stages (in-process interruptions and a SIGINT kill test), and one-sentence
errors for truncated images and NaN pixels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from monai_ext.supercon.config import SuperConConfig
from monai_ext.supercon.data import read_image
from monai_ext.supercon.run import OPTIONS, _setup, fit
from plugins.checkpoint import Checkpointer, load_checkpoint
from plugins.cli import main
from plugins.errors import UserInputError
from plugins.reporting import RunContext, RunDir
from plugins.testing import interrupt_cli_run
from plugins.threads import cpu_threads

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _one_thread():
    with cpu_threads(1):
        yield


def _photo_folder(root: Path, per_class: int = 6, side: int = 40) -> Path:
    """Class-per-folder JPEGs cut from scikit-learn's two sample photographs (real images)."""
    from sklearn.datasets import load_sample_images

    for name, img in zip(("china", "flower"), load_sample_images().images):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            y, x = divmod(i, 4)
            patch = img[30 + 90 * y : 30 + 90 * y + side, 40 + 140 * x : 40 + 140 * x + side]
            Image.fromarray(np.ascontiguousarray(patch)).save(root / name / f"{name}_{i}.jpg")
    return root


def _truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


# -- options ---------------------------------------------------------------------------------------
def test_options_cover_the_config_and_the_run_keys():
    config_keys = {f for f in SuperConConfig.__dataclass_fields__} - {"stage1_epochs"}
    run, reproduce = OPTIONS["run"], OPTIONS["reproduce"]
    data_keys = {"duplicates", "split_tolerance", "threshold_from", "cv_folds", "min_val_positives"}
    run_keys = {"val_fraction", "balanced", "rare_class", "rare_ratio", "task", "positive"}
    assert config_keys | run_keys | data_keys == set(run)
    assert data_keys <= set(reproduce)
    assert config_keys | {"val_fraction", "seeds", "methods", "ratios", "max_train"} <= set(
        reproduce
    )
    assert "multiclass" in reproduce and "stage1_epochs" not in run  # stage 1's epochs: --epochs
    # each default is the config's (the paper's) or the reduced reproduction's, written once
    assert run["lr2"].default == SuperConConfig.lr2 and reproduce["lr2"].default == 0.05
    assert reproduce["arch"].default == "micro" and run["arch"].default == "resnet50"


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["run", "supercon", "--set", "epoch=1"], "unknown option --set epoch for run supercon"),
        (
            ["run", "supercon", "--set", "batch_size=abc"],
            "--set batch_size=abc: expected an integer",
        ),
        (["run", "supercon", "--set", "batch_size=1"], "--set batch_size=1: expected at least 2"),
        (["run", "supercon", "--set", "stage2_encoder_mode=frozen"], "expected one of eval"),
        (["run", "supercon", "--set", "arch=vgg"], "--set arch=vgg: expected resnet50"),
        (["run", "supercon", "--set", "crop_scale=0.2"], "expected 2 comma-separated values"),
        (["run", "supercon", "--set", "val_fraction=0.6"], "val_fraction=0.6: expected at most"),
        (["reproduce", "supercon", "--set", "methods=ce,svm"], "expected one of ce"),
        (["reproduce", "supercon", "--set", "rare_class=1"], "unknown option --set rare_class"),
    ],
)
def test_bad_options_exit_2_with_one_line_and_no_run_folder(tmp_path, capsys, argv, needle):
    out = tmp_path / "runs"
    assert main([*argv, "--device", "cpu", "--no-progress", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


def test_help_lists_every_key_with_its_default(capsys):
    assert main(["run", "supercon", "--help"]) == 0
    text = capsys.readouterr().out
    for key in OPTIONS["run"]:
        assert f"  {key}=" in text
    assert "stage2_epochs=5 (paper); 60 on the embedded digits" in text


# -- checkpoints and resume -------------------------------------------------------------------
def _digits(n: int = 120) -> tuple[torch.Tensor, torch.Tensor]:
    from plugins.data import load_digits

    d = load_digits()
    return d.images[:n], d.labels[:n]


CFG = SuperConConfig(arch="micro", image_size=8, batch_size=32, stage2_epochs=2, lr2=0.05)
STAGES = {"supercon": ("stage 1", "stage 2"), "ce": ("train",)}


@pytest.mark.parametrize(
    "method, stop, balanced",
    [
        ("supercon", ("stage 1", 3), False),  # in the middle of stage 1's first epoch
        ("supercon", ("stage 2", 5), True),  # in stage 2, class-balanced batches
        ("ce", ("train", 6), False),  # the baselines' single loop
    ],
)
def test_resume_reaches_the_parameters_of_an_uninterrupted_run(
    tmp_path, monkeypatch, method, stop, balanced
):
    x, y = _digits()
    full, full_curves = fit(method, x, y, 10, CFG, 2, "cpu", 3, balanced)

    step = Checkpointer.step

    def step_then_stop(self, n, **objects):
        step(self, n, **objects)
        if (self.stage, n) == stop:
            raise KeyboardInterrupt

    ckpt = tmp_path / "last.ckpt"
    with monkeypatch.context() as m:
        m.setattr(Checkpointer, "step", step_then_stop)
        with pytest.raises(KeyboardInterrupt):
            fit(method, x, y, 10, CFG, 2, "cpu", 3, balanced,
                checkpointer=Checkpointer(ckpt, "supercon", 1, None, stages=STAGES[method]))  # fmt: skip
    saved = load_checkpoint(ckpt, method="supercon")
    assert (saved["stage"], saved["step"]) == stop

    resumed_ck = Checkpointer(tmp_path / "again.ckpt", "supercon", 1, None, ckpt, STAGES[method])
    resumed, curves = fit(method, x, y, 10, CFG, 2, "cpu", 3, balanced, checkpointer=resumed_ck)
    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert curves == full_curves  # the loss history (stage 1's too) travels with the checkpoint


def test_sigint_keeps_a_checkpoint_and_resume_matches_an_uninterrupted_run(tmp_path):
    """The kill test: a real ``run supercon`` process gets SIGINT after its first checkpoint."""
    args = ["run", "supercon", "--demo", "--epochs", "2", "--set", "stage2_epochs=3"]
    args += ["--set", "val_fraction=0", "--set", "image_size=8", "--device", "cpu"]
    args += ["--no-progress", "--threads", "1"]
    args += ["--checkpoint-every", "1"]
    cut = tmp_path / "cut"
    interrupted = interrupt_cli_run([*args, "--out", str(cut)], cut, cwd=tmp_path)
    assert interrupted.returncode == 130, interrupted.stderr
    (run,) = cut.iterdir()
    assert json.loads((run / "metrics.json").read_text())["status"] == "interrupted"
    assert "interrupted" in interrupted.stderr.splitlines()[-1]
    last = load_checkpoint(run / "last.ckpt", method="supercon")
    assert last["stage"] in ("stage 1", "stage 2") and last["step"] >= 1
    assert not (run / "checkpoint.pt").exists()

    resumed_out = tmp_path / "resumed"
    assert main([*args, "--out", str(resumed_out), "--resume", str(run / "last.ckpt")]) == 0
    (resumed,) = resumed_out.iterdir()
    assert json.loads((resumed / "metrics.json").read_text())["status"] == "completed"
    config = yaml.safe_load((resumed / "config.yaml").read_text())
    assert (config["stage1_epochs"], config["stage2_epochs"]) == (2, 3)  # effective, per stage
    assert (
        config["options_used"]["stage2_epochs"] == 3 and config["options_used"]["arch"] == "micro"
    )
    assert config["command"]["resume"] == str(run / "last.ckpt")

    # the uninterrupted run's training, on the data and settings ``run`` prepares
    ctx = RunContext(
        "supercon", RunDir(path=tmp_path / "ref"), demo=True, epochs=2, device=torch.device("cpu"),
        options={"stage2_epochs": "3", "val_fraction": "0", "image_size": "8"},
        option_set=OPTIONS["run"], progress=False,
    )  # fmt: skip
    cfg, epochs, balanced, d = _setup(ctx)
    tr = torch.as_tensor(d["train"])
    ref, _ = fit("supercon", d["images"][tr], d["labels"][tr], 10, cfg, epochs, "cpu", 0, balanced)
    a = ref.state_dict()
    b = load_checkpoint(resumed / "checkpoint.pt", method="supercon")["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# -- bad images ------------------------------------------------------------------------------------
def test_truncated_and_nan_images_are_one_sentence_naming_the_file(tmp_path):
    folder = _photo_folder(tmp_path / "data", per_class=1)
    jpg = _truncate(folder / "china" / "china_0.jpg")
    with pytest.raises(UserInputError, match=rf"image {jpg} is truncated or unreadable"):
        read_image(jpg, 16)
    pixels = np.random.default_rng(0).random((12, 12)).astype(np.float32)
    pixels[0, :3], pixels[5, 5] = np.nan, np.inf
    tif = tmp_path / "float.tif"
    Image.fromarray(pixels, mode="F").save(tif)
    with pytest.raises(UserInputError, match=rf"image {tif} contains 4 NaN or infinite values"):
        read_image(tif, 16)
    with pytest.raises(
        UserInputError, match="the training image tensor contains 1 NaN or infinite"
    ):
        bad = torch.rand(4, 3, 8, 8)
        bad[0, 0, 0, 0] = float("nan")
        fit("supercon", bad, torch.tensor([0, 1, 0, 1]), 2, CFG, 1, "cpu", 0)


@pytest.mark.parametrize("kind", ["truncated", "nan"])
def test_run_on_a_folder_with_a_bad_image_exits_2_naming_it(tmp_path, capsys, kind):
    folder = _photo_folder(tmp_path / "data", per_class=10)
    if kind == "truncated":
        bad = _truncate(folder / "flower" / "flower_2.jpg")
        needle = f"image {bad} is truncated or unreadable"
    else:
        pixels = np.full((20, 20), 0.5, np.float32)
        pixels[:2, :3] = np.nan
        bad = folder / "flower" / "flower_nan.tif"
        Image.fromarray(pixels, mode="F").save(bad)
        needle = f"image {bad} contains 6 NaN or infinite values"
    out = tmp_path / "runs"
    argv = ["run", "supercon", "--data", str(folder), "--demo", "--device", "cpu"]
    argv += ["--set", "positive=flower"]
    assert main([*argv, "--no-progress", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1
    assert not out.exists() or not any(out.iterdir())  # failed before work: no run folder
