"""The command: listing, bad input as one sentence (exit 2, no traceback), a run directory per run."""

import json
import subprocess
import sys

import numpy as np
import pytest

from plugins.cli import main
from plugins.registry import available_methods


def test_list_shows_registered_methods(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in available_methods():
        assert name in out
    assert "simclr" in out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["run", "no-such-method"], "unknown method 'no-such-method'"),
        (["run", "simclr", "--data", "/no/such/path"], "data path /no/such/path does not exist"),
        (["run", "simclr", "--set", "novalue"], "--set expects key=value"),
        (["run", "simclr", "--threads", "0"], "argument --threads: must be at least 1"),
    ],
)
def test_bad_input_is_one_sentence(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_nan_in_data_is_one_sentence(tmp_path, capsys):
    x = np.random.rand(30, 1, 8, 8)
    x[3, 0, 2, 2] = np.nan
    np.savez(tmp_path / "bad.npz", images=x, labels=np.arange(30) % 3)
    assert (
        main(
            ["run", "simclr", "--data", str(tmp_path / "bad.npz"), "--out", str(tmp_path / "runs")]
        )
        == 2
    )
    assert "1 NaN or infinite values" in capsys.readouterr().err


def test_wrong_array_layout_is_one_sentence(tmp_path, capsys):
    np.savez(tmp_path / "bad.npz", images=np.zeros((4, 8)), labels=np.zeros(4))
    assert (
        main(
            ["run", "simclr", "--data", str(tmp_path / "bad.npz"), "--out", str(tmp_path / "runs")]
        )
        == 2
    )
    assert "images must be (N, C, H, W)" in capsys.readouterr().err


def test_console_script_runs_simclr_on_array_file(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "d.npz",
        images=rng.random((60, 3, 8, 8)).astype("float32"),
        labels=np.arange(60) % 3,
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "plugins",
            "run",
            "simclr",
            "--data",
            str(tmp_path / "d.npz"),
            "--epochs",
            "1",
            "--out",
            str(tmp_path / "runs"),
            "--device",
            "cpu",
            "--no-progress",
            "--set",
            "image_size=8",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    run_dirs = list((tmp_path / "runs").iterdir())
    assert len(run_dirs) == 1 and run_dirs[0].name.startswith("simclr-")
    metrics = json.loads((run_dirs[0] / "metrics.json").read_text())
    assert {"knn_acc", "linear_acc", "effective_rank", "random_knn_acc"} <= set(metrics)
