"""The command: listing, bad input as one sentence (exit 2, no traceback), a run directory per run."""

import json
import os
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


# -- every bad invocation, for every registered method: exit 2, one line, no traceback, no folder --

METHODS = sorted(available_methods())


def _numeric_option(method: str, command: str) -> str | None:
    opts = available_methods()[method].option_set(command)
    return next((k for k, o in opts.items() if o.kind in ("int", "float") and not o.many), None)


def _bad_invocations(tmp_path, method: str) -> list[tuple[list[str], str]]:
    import torch

    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"\x80\x02not a checkpoint")
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"method": "zzz-other", "step": 1}, foreign)
    cases = [
        (["run", method, "--set", "no_such_key=1"], "unknown option --set no_such_key"),
        (["run", method, "--set", "novalue"], "--set expects key=value"),
        (["run", method, "--epochs", "0"], "argument --epochs: must be at least 1, got 0"),
        (["run", method, "--epochs", "-1"], "argument --epochs: must be at least 1, got -1"),
        (["run", method, "--epochs", "two"], "argument --epochs: expected a whole number"),
        (["run", method, "--seed", "-1"], "argument --seed: must be 0 or more"),
        (["run", method, "--threads", "0"], "argument --threads: must be at least 1"),
        (["run", method, "--data", "/no/such/path"], "data path /no/such/path does not exist"),
        (["run", method, "--device", "tpu"], "device 'tpu'"),
        (["run", method, "--resume", str(tmp_path / "no.ckpt")], "does not exist"),
        (["run", method, "--resume", str(corrupt)], "truncated or corrupt"),
        (["run", method, "--resume", str(tmp_path)], "is a folder, not a checkpoint file"),
        (
            ["run", method, "--resume", str(foreign)],
            f"written by method 'zzz-other', not '{method}'",
        ),
        (["run", method, "--checkpoint-every", "soon"], "--checkpoint-every expects"),
    ]
    numeric = _numeric_option(method, "run")
    if numeric is not None:
        cases.append((["run", method, "--set", f"{numeric}=abc"], f"--set {numeric}=abc: expected"))
    if available_methods()[method].reproduce is not None:
        cases.append((["reproduce", method, "--set", "no_such_key=1"], "unknown option"))
    return cases


@pytest.mark.parametrize("method", METHODS)
def test_every_bad_invocation_is_one_line_exit_2_and_leaves_no_folder(method, tmp_path, capsys):
    out = tmp_path / "runs"
    for argv, message in _bad_invocations(tmp_path, method):
        code = main([*argv, "--out", str(out), "--no-progress"])
        err = capsys.readouterr().err
        assert code == 2, (argv, err)
        assert message in err, (argv, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, (argv, err)
        assert not out.exists() or not any(out.iterdir()), (argv, list(out.iterdir()))


@pytest.mark.parametrize("method", METHODS)
def test_run_help_lists_every_option_with_its_default(method, capsys):
    assert main(["run", method, "--help"]) == 0
    text = capsys.readouterr().out
    opts = available_methods()[method].option_set("run")
    assert f"--set options of 'run {method}'" in text
    for key in opts:
        assert f"  {key}=" in text, key


@pytest.mark.parametrize(
    "argv,message",
    [
        (["predict", "simclr"], "has no predict command; predict takes: ariel, glcnet, grace."),
        (["bench", "no-such-topic"], "no benchmark named 'no-such-topic'; choose from: "),
    ],
)
def test_predict_and_bench_name_what_they_take(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_predict_and_bench_help_list_their_choices(capsys):
    assert main(["predict", "--help"]) == 0
    assert "glcnet" in capsys.readouterr().out
    assert main(["bench", "--help"]) == 0
    assert "losses" in capsys.readouterr().out


def _toy_spec(monkeypatch, run):
    from plugins import cli
    from plugins.registry import MethodSpec

    spec = MethodSpec("toy", "paper", "domain", "torch", "none", run="x:y")
    monkeypatch.setattr(spec.__class__, "load_run", lambda self: run)
    monkeypatch.setattr(cli, "get_method", lambda name: spec)
    return spec


def test_a_failure_after_work_started_keeps_the_folder_with_its_status(
    monkeypatch, tmp_path, capsys
):
    from plugins.errors import UserInputError
    from plugins.progress import progress_bar

    def run(ctx):
        ctx.run_dir.save_config({"lr": 1})
        for _ in progress_bar(range(3), show=False):
            pass
        raise UserInputError("the loss became NaN at step 3.")

    _toy_spec(monkeypatch, run)
    assert main(["run", "toy", "--out", str(tmp_path)]) == 2
    (folder,) = tmp_path.iterdir()
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics == {"status": "failed", "error": "the loss became NaN at step 3."}
    import yaml

    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert config["lr"] == 1 and config["command"]["name"] == "run"


def test_a_failure_before_work_started_leaves_nothing(monkeypatch, tmp_path):
    from plugins.errors import UserInputError

    def run(ctx):
        ctx.run_dir.save_config({"lr": 1})  # written, but no step taken
        raise UserInputError("labels file missing.")

    _toy_spec(monkeypatch, run)
    assert main(["run", "toy", "--out", str(tmp_path)]) == 2
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_exits_130_and_records_interrupted(monkeypatch, tmp_path, capsys):
    from plugins.progress import progress_bar

    def run(ctx):
        for _ in progress_bar(range(3), show=False):
            raise KeyboardInterrupt

    _toy_spec(monkeypatch, run)
    assert main(["run", "toy", "--out", str(tmp_path)]) == 130
    (folder,) = tmp_path.iterdir()
    assert json.loads((folder / "metrics.json").read_text())["status"] == "interrupted"
    assert capsys.readouterr().err.strip() == "contrastive-plugins: interrupted."


def test_a_completed_run_records_status_and_the_options_it_used(monkeypatch, tmp_path):
    def run(ctx):
        return {"acc": 0.5}

    _toy_spec(monkeypatch, run)
    assert main(["run", "toy", "--out", str(tmp_path), "--seed", "3"]) == 0
    (folder,) = tmp_path.iterdir()
    assert json.loads((folder / "metrics.json").read_text()) == {"acc": 0.5, "status": "completed"}


def test_a_fresh_process_prints_one_line_despite_framework_import_warnings(tmp_path):
    """Importing PyG warns about ``torch.jit.script``; the command keeps stderr to its one line."""
    empty = tmp_path / "shared"
    empty.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "plugins", "run", "ariel", "--set", "dataset=cora",
         "--out", str(tmp_path / "runs")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "CONTRASTIVE_PLUGINS_DATA": str(empty)},
    )  # fmt: skip
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "not downloaded without consent" in lines[0], proc.stderr
    assert not (tmp_path / "runs").exists()


def test_printed_metrics_name_nested_records_instead_of_dumping_them(capsys):
    from plugins.cli import _print_metrics

    _print_metrics({"dice": 0.8125, "steps": 3, "split_of": {"dice": "test"}, "cases": ["a"]})
    out = capsys.readouterr().out.splitlines()
    assert out == ["  dice: 0.8125", "  steps: 3", "  (in metrics.json: split_of, cases)"]
