"""Issue #19 for SimCLR, DirectCLR and HCSC: declared ``--set`` options, periodic checkpoints that a
SIGINT leaves behind and ``--resume`` continues to the same parameters, and one-sentence data errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from plugins.checkpoint import Checkpointer, load_checkpoint
from plugins.cli import main
from plugins.data import load_image_folder, load_train_test
from plugins.errors import UserInputError
from plugins.testing import interrupt_cli_run
from plugins.threads import cpu_threads

# -- kill test: SIGINT mid-training, then --resume -------------------------------------------------
# 400 real digits (8 px): 280 training images at batch 16 give 17 steps per epoch, 34 in two epochs;
# a test set of 120 keeps the evaluation and the embedding map to about a second
STEPS_PER_EPOCH, EPOCHS = 17, 2


@pytest.fixture(scope="module")
def tiny_digits(tmp_path_factory) -> Path:
    from plugins.data import load_digits

    d = load_digits()
    path = tmp_path_factory.mktemp("data") / "digits400.npz"
    np.savez(path, images=d.images[:400].numpy(), labels=d.labels[:400].numpy())
    return path


def _command(method: str, data: Path, out: Path, *extra: str) -> list[str]:
    """The arguments of ``python -m plugins``."""
    return ["run", method, "--data", str(data), "--epochs", str(EPOCHS), "--set", "batch_size=16",
            "--device", "cpu", "--no-progress", "--threads", "1", "--checkpoint-every", "1",
            "--out", str(out), *extra]  # fmt: skip


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def _kill_and_resume(method: str, data: Path, tmp_path: Path, kill_step: int, *extra: str):
    """The resumed run's final checkpoint.pt and run folder, after checking the interrupted run."""
    argv = _command(method, data, tmp_path / "a", *extra)
    cut = interrupt_cli_run(
        argv, tmp_path / "a", min_step=kill_step, cwd=tmp_path, env={"MKL_NUM_THREADS": "1"},
        timeout=300,
    )  # fmt: skip
    ckpt = cut.last_ckpt
    assert cut.returncode == 130
    assert json.loads((ckpt.parent / "metrics.json").read_text())["status"] == "interrupted"
    state = load_checkpoint(ckpt, method)
    step = state["global_step"] if "global_step" in state else state["step"]  # Lightning's, ours
    assert kill_step <= step < STEPS_PER_EPOCH * EPOCHS  # in the middle of training
    cmd = _command(method, data, tmp_path / "b", *extra, "--resume", str(ckpt))
    done = subprocess.run(
        [sys.executable, "-m", "plugins", *cmd], cwd=tmp_path, env=_env(), capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = (tmp_path / "b").iterdir()
    assert json.loads((run / "metrics.json").read_text())["status"] == "completed"
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["command"]["resume"] == str(ckpt) and config["epochs"] == EPOCHS
    return load_checkpoint(run / "checkpoint.pt"), run


def _assert_same(resumed: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> None:
    assert resumed.keys() == reference.keys()
    for k, v in reference.items():
        torch.testing.assert_close(resumed[k], v, rtol=0, atol=1e-6, msg=k)


def test_simclr_sigint_then_resume_reaches_the_uninterrupted_parameters(tmp_path, tiny_digits):
    """SimCLR trains through the engine (Lightning): its last.ckpt is Lightning's, and the resumed
    run equals an uninterrupted run of the same engine, one step per batch."""
    from plugins.methods.simclr import SimCLRConfig
    from plugins.methods.simclr.run import fit_simclr
    from plugins.reporting import RunContext, RunDir

    final, run = _kill_and_resume("simclr", tiny_digits, tmp_path, kill_step=3)
    assert "state_dict" in load_checkpoint(next((tmp_path / "a").glob("*/last.ckpt")), "simclr")
    cfg = SimCLRConfig(**final["config"])
    train_set = load_train_test(str(tiny_digits))[0]
    ctx = RunContext("simclr", RunDir(path=tmp_path / "ref"), device=torch.device("cpu"),
                     progress=False, checkpoint_every=(None, None))  # fmt: skip
    with cpu_threads(1):
        model, losses = fit_simclr(ctx, train_set, cfg)
    assert len(losses) == STEPS_PER_EPOCH * EPOCHS
    _assert_same(final["encoder"], model.encoder.state_dict())
    _assert_same(final["projector"], model.projector.state_dict())
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["final_loss"] == pytest.approx(losses[-1], abs=1e-6)


def test_hcsc_sigint_in_a_clustered_epoch_then_resume_is_exact(tmp_path, tiny_digits):
    """HCSC trains through the engine (HCSCTask under Lightning): interrupted in its clustered
    epoch, the resumed run ends with the parameters, key queue, prototypes, loss curve and
    diagnostics of an uninterrupted engine run."""
    from plugins.methods.hcsc import HCSCConfig
    from plugins.methods.hcsc.run import fit_hcsc
    from plugins.reporting import RunContext, RunDir

    # epoch 1 is plain MoCo, epoch 2 clusters: interrupting it at step 20 needs its prototypes, the
    # key queue, the queue-to-prototype cache and the selection counts back
    kill = STEPS_PER_EPOCH + 3
    final, run = _kill_and_resume("hcsc", tiny_digits, tmp_path, kill, "--set", "warmup_epochs=1")
    cut = load_checkpoint(next((tmp_path / "a").glob("*/last.ckpt")), "hcsc")
    assert "state_dict" in cut and cut["hcsc"]["clusters"] is not None  # Lightning's, clustered
    cfg = HCSCConfig(**final["config"])
    train_set = load_train_test(str(tiny_digits))[0]
    ctx = RunContext("hcsc", RunDir(path=tmp_path / "ref"), device=torch.device("cpu"),
                     progress=False, checkpoint_every=(None, None))  # fmt: skip
    with cpu_threads(1):
        model, hist = fit_hcsc(ctx, train_set, cfg)
    assert len(hist.nmi) == 1 and len(hist.losses) == STEPS_PER_EPOCH * EPOCHS
    _assert_same(final["model"], model.state_dict())  # both encoders, heads and the key queue
    prototypes = final["prototypes"]
    for name in ("im2cluster", "centroids", "density", "parents"):
        for a, b in zip(prototypes[name], getattr(hist.clusters, name), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["final_loss"] == pytest.approx(hist.losses[-1], abs=1e-6)
    assert metrics["nmi_level0"] == pytest.approx(hist.nmi[-1])
    assert metrics["false_negatives_removed"] == pytest.approx(hist.fn_removed[-1])
    assert metrics["true_negatives_removed"] == pytest.approx(hist.tn_removed[-1])
    assert 0 < metrics["false_negatives_removed"] <= 1


class _StopAt(Checkpointer):
    """Saves every step and raises KeyboardInterrupt after step ``stop`` (an in-process Ctrl-C)."""

    def __init__(self, path: Path, stop: int | None, resume: Path | None = None):
        super().__init__(path, "directclr", every_steps=1, every_seconds=None, resume=resume)
        self.stop = stop

    def step(self, step: int, **objects) -> None:
        super().step(step, **objects)
        if step == self.stop:
            raise KeyboardInterrupt


def test_directclr_resume_equals_uninterrupted_with_collapse_history(tmp_path):
    from plugins.methods.directclr import DirectCLR, DirectCLRConfig
    from plugins.methods.directclr.train import train_directclr
    from plugins.methods.simclr import TinyResNet

    train_set, test_set, _ = load_train_test(None, size=8)
    train_set = train_set.subset(torch.arange(256))
    cfg = DirectCLRConfig(epochs=3, batch_size=64, optimizer="lars")  # 4 steps per epoch

    def train(ckpt: Checkpointer | None):
        torch.manual_seed(0)
        backbone = TinyResNet(1, widths=(8, 16))
        model = DirectCLR(backbone, mode="directclr", feat_dim=16, num_classes=10, config=cfg)
        return train_directclr(model, train_set, cfg, "cpu", 0, False, probe=test_set.images[:64],
                               monitor_every=3, checkpointer=ckpt)  # fmt: skip

    with cpu_threads(1):
        reference = train(None)
        with pytest.raises(KeyboardInterrupt):
            train(_StopAt(tmp_path / "last.ckpt", stop=5))  # mid-epoch 2, after the check of step 3
        assert load_checkpoint(tmp_path / "last.ckpt", "directclr")["step"] == 5
        resumed = train(_StopAt(tmp_path / "resumed.ckpt", None, resume=tmp_path / "last.ckpt"))
    _assert_same(resumed.model.state_dict(), reference.model.state_dict())
    assert resumed.losses == pytest.approx(reference.losses, abs=1e-6) and len(resumed.losses) == 12
    assert resumed.classifier_acc == pytest.approx(reference.classifier_acc)
    for on, tracker in reference.trackers.items():
        got = resumed.trackers[on]
        assert [h["step"] for h in got.history] == [0, 3, 6, 9, 12]
        assert got.history == pytest.approx(tracker.history)
        np.testing.assert_allclose(got.spectra[12], tracker.spectra[12], atol=1e-9)


# -- options ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "directclr", "--set", "epoch=1"], "unknown option --set epoch for run directclr"),
        (["run", "directclr", "--set", "mode=simclr2"], "--set mode=simclr2: expected one of"),
        (["run", "directclr", "--set", "blur_p=0.5"], "--set blur_p=0.5: expected 2"),
        (["run", "directclr", "--set", "widths=8,16", "--set", "d0=20"], "at most the representation width 16"),
        (["reproduce", "directclr", "--set", "modes=directclr,nope"], "--set modes=directclr,nope: expected one of"),
        (["run", "hcsc", "--set", "batchsize=16"], "(did you mean batch_size?)"),
        (["run", "hcsc", "--set", "batch_size=abc"], "--set batch_size=abc: expected an integer."),
        (["run", "hcsc", "--set", "cluster_sizes=10,20"], "expected decreasing sizes"),
        (["run", "hcsc", "--set", "cluster_sizes=5000,10"], "expected at most 1257 prototypes"),
        (["run", "hcsc", "--set", "momentum=2"], "--set momentum=2: expected at most 1."),
        (["reproduce", "hcsc", "--set", "clustering=false"], "unknown option --set clustering"),
        (["run", "simclr", "--set", "crop_scale=0.2"], "--set crop_scale=0.2: expected 2"),
    ],
)  # fmt: skip
def test_bad_options_are_one_sentence_and_leave_no_folder(argv, message, tmp_path, capsys):
    assert main([*argv, "--device", "cpu", "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize(
    ("method", "keys"),
    [
        ("directclr", ["mode=directclr", "widths=32,64,128 (16,32,64 with --demo)", "blur_p=1.0,0.1",
                       "batch_size=128", "optimizer=lars"]),
        ("hcsc", ["clustering=true", "momentum=0.99", "cluster_sizes=training images / 40",
                  "warmup_epochs=a quarter of the epochs", "optimizer=adam"]),
    ],
)  # fmt: skip
def test_run_help_lists_the_keys_with_defaults(method, keys, capsys):
    try:
        code = main(["run", method, "--help"])
    except SystemExit as done:  # argparse's way out of --help
        code = done.code
    assert code in (0, None)
    out = capsys.readouterr().out
    for key in keys:
        assert key in out


def test_directclr_config_records_effective_settings(tmp_path):
    from plugins.methods.directclr.run import OPTIONS, run
    from plugins.reporting import RunContext, RunDir

    ctx = RunContext("directclr", RunDir(path=tmp_path), epochs=1, device=torch.device("cpu"), progress=False,
                     options={"widths": "8,16", "map_points": "60", "mode": "baseline", "image_size": "8",
                              "optimizer": "adam", "blur_p": "0.5,0.5"},
                     option_set=OPTIONS["run"])  # fmt: skip
    metrics = run(ctx)
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert (
        config["epochs"] == 1 and config["optimizer"] == "adam" and config["blur_p"] == [0.5, 0.5]
    )
    assert (
        config["widths"] == [8, 16] and config["batch_size"] == 128 and config["mode"] == "baseline"
    )
    assert ctx.used["monitor_every"] == 50 and ctx.used["mode"] == "baseline"
    assert metrics["steps"] == 1257 // 128 and metrics["dim"] == 16


def test_hcsc_cpu_config_derives_what_depends_on_the_data():
    from plugins.methods.hcsc.run import OPTIONS, cpu_config
    from plugins.reporting import RunContext, RunDir

    ctx = RunContext(
        "hcsc", RunDir(path="unused"), options={"momentum": "0.9"}, option_set=OPTIONS["run"]
    )
    cfg = cpu_config(ctx, 1000, 8, image_size=16)
    assert (cfg.epochs, cfg.warmup_epochs, cfg.queue_size) == (8, 2, 500)
    assert cfg.cluster_sizes == (25, 16, 8) and cfg.momentum == 0.9 and cfg.optimizer == "adam"
    assert cfg.kmeans_restarts == 1 and cfg.image_size == 16 and cfg.temperature == 0.2
    assert ctx.used["warmup_epochs"] == 2 and ctx.used["cluster_sizes"] is None
    ctx = RunContext("hcsc", RunDir(path="unused"), options={"cluster_sizes": "12,6", "queue_size": "64"},
                     option_set=OPTIONS["reproduce"])  # fmt: skip
    cfg = cpu_config(ctx, 1000, 4)
    assert cfg.cluster_sizes == (12, 6) and cfg.queue_size == 64 and cfg.batch_size == 128


# -- data errors -----------------------------------------------------------------------------------
def test_npy_file_says_what_it_is_and_what_is_accepted(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((10, 1, 8, 8)))
    assert (
        main(["run", "simclr", "--data", str(tmp_path / "x.npy"), "--out", str(tmp_path / "runs")])
        == 2
    )
    err = capsys.readouterr().err
    assert (
        f"data path {tmp_path / 'x.npy'} is a .npy file, which holds one array and no labels" in err
    )
    assert "an .npz file with arrays 'images'" in err and "class-per-folder image folder" in err
    assert not (tmp_path / "runs").exists()
    (tmp_path / "t.csv").write_text("1,2\n")
    with pytest.raises(UserInputError, match=r"is a '.csv' file, not a data set; accepted: digits"):
        load_train_test(str(tmp_path / "t.csv"))


def test_truncated_image_names_the_file(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.new("RGB", (16, 16), (40 * i, 90, 200)).save(tmp_path / cls / f"{i}.jpg")
    good = (tmp_path / "b" / "1.jpg").read_bytes()
    (tmp_path / "b" / "1.jpg").write_bytes(good[: len(good) // 2])
    with pytest.raises(UserInputError, match=r"cannot read image .*b/1\.jpg \(truncated or not an"):
        load_image_folder(tmp_path, size=8)


def test_array_file_errors_name_the_file_and_count(tmp_path):
    x = np.random.rand(20, 1, 8, 8).astype(np.float32)
    x[0, 0, 0, :3], x[5, 0, 1, 1] = np.nan, -np.inf
    np.savez(tmp_path / "nan.npz", images=x, labels=np.arange(20) % 2)
    with pytest.raises(UserInputError, match=r"images in .*nan\.npz contains 4 NaN or infinite"):
        load_train_test(str(tmp_path / "nan.npz"))
    y = (np.arange(20) % 2).astype(np.float32)
    y[2] = np.nan
    np.savez(tmp_path / "nanlab.npz", images=np.zeros((20, 8, 8)), labels=y)
    with pytest.raises(UserInputError, match=r"labels in .*nanlab\.npz contains 1 NaN"):
        load_train_test(str(tmp_path / "nanlab.npz"))
    data = (tmp_path / "nan.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserInputError, match=r"cannot read array file .*cut\.npz"):
        load_train_test(str(tmp_path / "cut.npz"))
    torch.save(
        {"images": torch.rand(3, 1, 8, 8), "labels": torch.tensor([0, 1, 1])}, tmp_path / "few.pt"
    )
    with pytest.raises(UserInputError, match=r"few\.pt: cannot split 3 images"):
        load_train_test(str(tmp_path / "few.pt"))
    np.savez(tmp_path / "neg.npz", images=np.zeros((4, 8, 8)), labels=np.array([0, -1, 1, -1]))
    with pytest.raises(
        UserInputError, match=r"neg\.npz: labels must be class numbers 0, 1, \.\.\., got 2"
    ):
        load_train_test(str(tmp_path / "neg.npz"))


def test_cifar_batches_are_unpickled_safely_and_errors_name_the_file(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo owned",))

    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": [0]}))
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({b"data": Evil(), b"labels": [0]}))
    with pytest.raises(
        UserInputError, match=r"data_batch_1 is not a CIFAR-10 python batch \(refusing to unpickle"
    ):
        load_train_test(str(tmp_path))
    ok = pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]})
    (tmp_path / "data_batch_1").write_bytes(ok)
    (tmp_path / "test_batch").write_bytes(ok[:40])
    with pytest.raises(UserInputError, match=r"test_batch is truncated or unreadable"):
        load_train_test(str(tmp_path))
    (tmp_path / "test_batch").write_bytes(ok)
    train, test, _ = load_train_test(str(tmp_path))
    assert train.images.shape == (2, 3, 32, 32) and test.labels.tolist() == [0, 1]
