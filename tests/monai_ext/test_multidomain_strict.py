"""``run|reproduce mr-multidomain`` through the command: declared options, bad data in one
sentence, nothing left behind, and a SIGINT-then-resume kill test (progress: test_multidomain_run)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from plugins.checkpoint import load_checkpoint
from plugins.cli import main
from plugins.testing import interrupt_cli_run

# a tiny network on 32x32 slices of the embedded MNI152 demo: seconds per run on one CPU thread
TINY = [
    "--set", "features=4,4,8,8,16,4", "--set", "embedding_dim=8", "--set", "embedding_hidden=8",
    "--set", "size=32", "--set", "augment_copies=0",
    "--device", "cpu", "--no-progress",
]  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")


def _run(tmp_path: Path, capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    code = main(["run", "mr-multidomain", *args, "--out", str(tmp_path / "runs")])
    return code, capsys.readouterr().err


def _nifti_datalist(root: Path, nan: bool = False) -> Path:
    """One domain, one training and one test volume; ``nan``: 2 NaN and 1 inf in the training image."""
    rng = np.random.default_rng(0)
    lists: dict[str, list] = {"training": [], "test": []}
    for i, key in enumerate(("training", "test")):
        img = rng.random((16, 16, 4)).astype(np.float32)
        lab = (img > 0.5).astype(np.uint8)
        if nan and key == "training":
            img[0, 0, :2] = np.nan
            img[1, 1, 1] = np.inf
        nib.save(nib.Nifti1Image(img, np.eye(4)), root / f"v{i}.nii.gz")
        nib.save(nib.Nifti1Image(lab, np.eye(4)), root / f"v{i}_seg.nii.gz")
        lists[key].append({"image": f"v{i}.nii.gz", "label": f"v{i}_seg.nii.gz", "domain": 0})
    path = root / "datalist.json"
    path.write_text(json.dumps(lists))
    return path


def test_bad_data_and_options_are_one_sentence_and_leave_no_run_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    npz = tmp_path / "x.npz"
    np.savez(npz, a=np.zeros(3))
    code, err = _run(tmp_path, capsys, "--data", str(npz), *TINY)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err == (
        f"contrastive-plugins: error: --data {npz} is a binary file (.npz): expected a MONAI "
        "datalist JSON (.json) with 'training'/'validation'/'test' lists of "
        '{"image": "x.nii.gz", "label": "x_seg.nii.gz", "domain": k} items (NIfTI .nii/.nii.gz).\n'
    )
    nii = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), nii)
    code, err = _run(tmp_path, capsys, "--data", str(nii), *TINY)
    assert code == 2 and "expected a MONAI datalist JSON" in err and err.count("\n") == 1
    datalist = _nifti_datalist(tmp_path, nan=True)
    code, err = _run(tmp_path, capsys, "--data", str(datalist), *TINY)
    assert code == 2 and err == (
        f"contrastive-plugins: error: {tmp_path / 'v0.nii.gz'} contains 3 NaN or infinite "
        "voxels; clean the volume first.\n"
    )
    cases = {
        "stepz=3": "unknown option --set stepz for run mr-multidomain (did you mean steps?)",
        "steps=0": "--set steps=0: expected at least 1.",
        "features=4,4": "--set features=4,4: expected 6 comma-separated values.",
        "size=40": "--set size=40: expected a multiple of 16",
        "test_bn=test": "--set test_bn=test: expected one of running, adapt.",
        "label_fraction=2": "--set label_fraction=2: expected at most 1.",
    }
    for pair, message in cases.items():
        code, err = _run(tmp_path, capsys, "--set", pair, "--device", "cpu")
        assert code == 2 and message in err and err.count("\n") == 1, (pair, err)
    out = str(tmp_path / "runs")
    code = main(["reproduce", "mr-multidomain", "--set", "seeds=0", "--out", out])
    assert code == 2 and "--set seeds=0: expected at least 1." in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # no run folder for any of them


def test_help_lists_every_declared_key(capsys: pytest.CaptureFixture) -> None:
    assert main(["run", "mr-multidomain", "--help"]) == 0
    out = capsys.readouterr().out
    for text in ("steps=300 (25 with --demo)", "label_fraction=1.0", "colin=false", "threads=1"):
        assert text in out, text
    assert main(["reproduce", "mr-multidomain", "--help"]) == 0
    out = capsys.readouterr().out
    for text in ("fractions=1.0,<small_fraction>", "small_fraction=0.1", "seeds=1", "colin=true"):
        assert text in out, text
    assert "configs=per_domain,joint,md,md_supcon,md_margin" in out


def test_epochs_set_steps_unless_steps_is_given(tmp_path: Path) -> None:
    from monai_ext.multidomain.run import OPTIONS, _settings
    from plugins.reporting import RunContext, RunDir

    def steps(**kw) -> int:
        ctx = RunContext("mr-multidomain", RunDir(path=tmp_path), option_set=OPTIONS["run"], **kw)
        s = _settings(ctx)
        assert ctx.used["steps"] == s.steps  # recorded in config.yaml's options_used
        return s.steps

    assert steps() == 300 and steps(demo=True) == 25 and steps(epochs=7) == 7
    assert steps(epochs=7, options={"steps": "9"}) == 9


def test_sigint_keeps_a_checkpoint_and_resume_reaches_the_same_parameters(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    steps = 30
    args = [*TINY, "--set", f"steps={steps}", "--checkpoint-every", "1"]
    killed = tmp_path / "killed"
    cut = interrupt_cli_run(
        ["run", "mr-multidomain", *args, "--out", str(killed)], killed, cwd=tmp_path
    )
    assert cut.returncode == 130, cut.stderr[-2000:]
    assert "Traceback" not in cut.stderr
    (run_dir,) = killed.iterdir()
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "interrupted"
    state = load_checkpoint(run_dir / "last.ckpt", "mr-multidomain")
    assert 1 <= state["step"] < steps
    assert set(state["objects"]) == {"model", "opt", "rng", "history"}
    assert len(state["objects"]["history"]) == state["step"]

    resume = ["--resume", str(run_dir / "last.ckpt")]
    assert main(["run", "mr-multidomain", *args, *resume, "--out", str(tmp_path / "resumed")]) == 0
    assert main(["run", "mr-multidomain", *args, "--out", str(tmp_path / "full")]) == 0
    capsys.readouterr()
    (resumed,), (full,) = (tmp_path / "resumed").iterdir(), (tmp_path / "full").iterdir()
    a = load_checkpoint(resumed / "checkpoint.pt")["model"]
    b = load_checkpoint(full / "checkpoint.pt")["model"]
    assert a.keys() == b.keys()
    for key in b:
        assert torch.equal(a[key], b[key]), key
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (resumed, full))
    assert ma["final_loss"] == mb["final_loss"] and ma["dice_mean"] == mb["dice_mean"]
    assert ma["status"] == mb["status"] == "completed"
    config = yaml.safe_load((full / "config.yaml").read_text())
    assert config["steps"] == steps and config["options_used"]["steps"] == steps
    assert yaml.safe_load((resumed / "config.yaml").read_text())["command"]["resume"] == resume[1]
