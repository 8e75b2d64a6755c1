"""The command's engine (:mod:`plugins.engine`): resume at an epoch boundary and mid-epoch, the
engine flags of ``run``, DDP launched by the command, and the bad inputs of the issue."""

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
from lightning.pytorch import Callback

from plugins.checkpoint import load_checkpoint
from plugins.cli import main
from plugins.data import load_digits
from plugins.data.stream import EpochSampler
from plugins.engine_settings import EngineSettings, per_rank_batch
from plugins.errors import UserInputError
from plugins.methods.simclr import SimCLRConfig
from plugins.methods.simclr.run import fit_simclr
from plugins.reporting import RunContext, RunDir
from plugins.threads import cpu_threads

# 192 real digits at 8 px, batch 32: 6 steps per epoch
N, BATCH = 192, 32


@pytest.fixture(scope="module")
def digits():
    return load_digits().subset(torch.arange(N))


def _ctx(path: Path, **kw) -> RunContext:
    kw.setdefault("checkpoint_every", (None, None))
    return RunContext("simclr", RunDir(path=path), device=torch.device("cpu"), progress=False, **kw)


def _fit(digits, path: Path, epochs: int, **kw):
    cfg = SimCLRConfig(batch_size=BATCH, epochs=epochs, projection_dim=16)
    with cpu_threads(1):
        model, losses = fit_simclr(_ctx(path, **kw), digits, cfg)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, losses


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


def _resume_from(digits, tmp_path, stop_after: int):
    """Train with ``last.ckpt`` every ``stop_after`` steps for 2 epochs, keep the checkpoint of
    step ``stop_after`` and resume from it to the end."""
    ref, ref_losses = _fit(digits, tmp_path / "ref", epochs=2)
    cut_dir = tmp_path / "cut"
    # max 1 epoch or stop_after steps: the first part of the run, then its last.ckpt
    cfg = SimCLRConfig(batch_size=BATCH, epochs=2, projection_dim=16)
    from plugins.data.stream import TensorImageDataModule
    from plugins.engine import fit
    from plugins.methods.simclr.task import SimCLRTask

    torch.manual_seed(0)
    task = SimCLRTask(in_channels=1, projection_dim=16)
    data = TensorImageDataModule(digits, val_fraction=0, batch_size=BATCH, seed=0)
    with cpu_threads(1), pytest.raises(KeyboardInterrupt):
        # a stop (as Ctrl-C), not a shorter run: the cosine schedule spans the whole run
        fit(_ctx(cut_dir, checkpoint_every=(stop_after, None)), task, data,
            max_epochs=cfg.epochs, seed=0, callbacks=[_StopAt(stop_after)])  # fmt: skip
    ckpt = cut_dir / "last.ckpt"
    state = load_checkpoint(ckpt, "simclr")
    assert state["global_step"] == stop_after
    resumed, losses = _fit(digits, tmp_path / "resumed", epochs=2, resume=str(ckpt))
    return ref, ref_losses, resumed, losses


class _StopAt(Callback):
    """Ctrl-C before the optimisation step after ``step`` (its checkpoint is written by then)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise KeyboardInterrupt


def test_resume_at_an_epoch_boundary_equals_one_run(digits, tmp_path):
    """2 epochs in one go = 1 epoch, a stop, and --resume for 1 more: parameters and the loss
    curve (the resumed run's recorder comes back from the checkpoint)."""
    steps = N // BATCH
    ref, ref_losses, resumed, losses = _resume_from(digits, tmp_path, stop_after=steps)
    assert len(ref_losses) == 2 * steps
    _assert_same(resumed, ref)
    assert losses == pytest.approx(ref_losses, abs=1e-6)


def test_resume_in_the_middle_of_an_epoch_equals_one_run(digits, tmp_path):
    """The sampler skips the batches of the epoch already done, and the views are reseeded per
    step from (seed, step, rank): a stop after 4 of 6 steps resumes to the same parameters."""
    ref, ref_losses, resumed, losses = _resume_from(digits, tmp_path, stop_after=4)
    _assert_same(resumed, ref)
    assert losses == pytest.approx(ref_losses, abs=1e-6)


def test_epoch_sampler_skip_and_order_depend_on_seed_and_epoch_only():
    s = EpochSampler(10, seed=3, num_replicas=2, rank=1, position=lambda: (4, 1))
    s.batch_size = 2
    s.set_epoch(1)  # the trainer's position wins over Lightning's epoch
    full = np.random.default_rng([3, 4]).permutation(10)[1::2]
    assert list(s) == full[2:].tolist()
    assert len(s) == 5  # the epoch's length stays what Lightning counts


def test_per_rank_batch_keeps_the_global_batch():
    assert per_rank_batch(32, 1) == 32 and per_rank_batch(32, 4) == 8
    with pytest.raises(UserInputError, match="cannot be split evenly over 3 processes"):
        per_rank_batch(16, 3)
    with pytest.raises(UserInputError, match="batch_size 1 cannot be split"):
        per_rank_batch(1, 2)


def test_cpu_cannot_take_16_mixed_or_more_gpus_than_exist():
    with pytest.raises(UserInputError, match="16-mixed needs a CUDA device"):
        EngineSettings(precision="16-mixed").check(torch.device("cpu"))
    EngineSettings(precision="bf16-mixed", devices=2, strategy="ddp").check(torch.device("cpu"))


# -- the command -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_file(tmp_path_factory) -> Path:
    d = load_digits()
    path = tmp_path_factory.mktemp("data") / "digits192.npz"
    np.savez(path, images=d.images[:N].numpy(), labels=d.labels[:N].numpy())
    return path


def _argv(data: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "simclr", "--data", str(data), "--epochs", "1", "--set", "batch_size=16",
            "--set", "projection_dim=16", "--device", "cpu", "--no-progress", "--threads", "1",
            "--out", str(out), *extra]  # fmt: skip


@pytest.mark.parametrize(
    "extra, says",
    [
        (["--strategy", "ddp", "--devices", "3"], "batch_size 16 cannot be split evenly over 3"),
        (["--precision", "16-mixed"], "16-mixed needs a CUDA device"),
        (["--precision", "fp8"], "argument --precision: invalid choice"),
        (["--devices", "0"], "must be at least 1"),
        (["--accumulate", "two"], "expected a whole number"),
        (["--device", "cuda"], "CUDA is not available"),
    ],
    ids=["ddp-batch", "16-mixed-cpu", "precision", "devices", "accumulate", "gpu"],
)
def test_bad_engine_flags_are_one_sentence(digits_file, tmp_path, capsys, extra, says):
    if extra == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(_argv(digits_file, tmp_path, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not any(tmp_path.iterdir())  # no run folder


def test_methods_with_their_own_loops_refuse_engine_flags(tmp_path, capsys):
    assert (
        main(["run", "mr-multidomain", "--demo", "--strategy", "ddp", "--out", str(tmp_path)]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert "mr-multidomain does not take --strategy" in err and len(err.splitlines()) == 1
    assert not any(tmp_path.iterdir())


def test_bf16_mixed_and_accumulate_through_the_command(digits_file, tmp_path):
    out = tmp_path / "out"
    argv = _argv(digits_file, out, "--precision", "bf16-mixed", "--accumulate", "2",
                 "--checkpoint-every", "1")  # fmt: skip
    assert main(argv) == 0
    (run,) = out.iterdir()
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["command"]["precision"] == "bf16-mixed" and config["command"]["accumulate"] == 2
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and np.isfinite(metrics["final_loss"])
    # 134 training digits at batch 16: 8 batches, 4 optimisation steps of 2 batches
    assert load_checkpoint(run / "last.ckpt", "simclr")["global_step"] == 4


def test_a_nan_loss_stops_the_run_in_one_sentence_before_evaluating(
    digits_file, tmp_path, capsys, monkeypatch
):
    """A loss that turns NaN at step 2 (as a too-large learning rate does) stops the fit there:
    exit 1, one line naming the step, ``status: failed``, and the last checkpoint written before
    it holds finite weights, instead of a table computed from NaN weights."""
    from plugins.methods.simclr.task import SimCLRTask

    step_of = SimCLRTask.training_step

    def nan_at_step_2(self, batch, batch_idx=0):
        out = step_of(self, batch, batch_idx)
        if self.trainer.global_step == 2:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(SimCLRTask, "training_step", nan_at_step_2)
    out = tmp_path / "out"
    assert main(_argv(digits_file, out, "--checkpoint-every", "1")) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "training diverged: the loss became nan at step 2 (epoch 0)" in err
    (run,) = out.iterdir()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "step 2" in metrics["error"]
    state = load_checkpoint(run / "last.ckpt", "simclr")
    assert state["global_step"] == 2  # the NaN step's update was never saved
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values())


def test_check_finite_loss_names_the_step():
    from plugins.errors import TrainingDiverged, check_finite_loss

    assert check_finite_loss(torch.tensor(1.5), 0) == 1.5
    for bad in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(TrainingDiverged, match=f"became {bad} at step 7;"):
            check_finite_loss(torch.tensor(bad), 7)


@pytest.mark.distributed
def test_ddp_on_two_cpu_processes_through_the_command(digits_file, tmp_path):
    """``--strategy ddp --devices 2``: Lightning launches a second copy of the command; both train
    (gloo), only rank 0 writes, into one run folder, and the launched copy leaves nothing behind."""
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("CONTRASTIVE_PLUGINS_RUN_DIR", None)
    done = subprocess.run(
        [sys.executable, "-m", "plugins", *_argv(digits_file, out, "--strategy", "ddp",
                                                 "--devices", "2")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = out.iterdir()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and np.isfinite(metrics["final_loss"])
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["command"]["devices"] == 2 and config["command"]["strategy"] == "ddp"
    # 134 training digits, global batch 16 = 8 per process: 8 steps in the one epoch
    assert load_checkpoint(run / "last.ckpt", "simclr")["global_step"] == 8
    assert done.stdout.count("results in") == 1


def test_a_batch_larger_than_the_data_is_said_once_not_changed_silently(digits_file, tmp_path):
    from plugins.engine_settings import batch_for

    assert batch_for(16, 134) == 16
    with pytest.warns(UserWarning, match="batch_size 500 is larger than the 134 training images"):
        assert batch_for(500, 134) == 134
    argv = _argv(digits_file, tmp_path)
    argv[argv.index("batch_size=16")] = "batch_size=4096"
    # 192 digits, 134 after the validation split
    with pytest.warns(UserWarning, match="batch_size 4096 is larger than the 134 training images"):
        assert main(argv) == 0


def test_the_command_prints_its_own_warnings_as_one_line():
    """A warning of this library reaches the terminal as ``contrastive-plugins: warning: ...``,
    not as Python's ``file:line: UserWarning:`` plus the source line; the frameworks' keep theirs."""
    import warnings

    import graph_ext.run
    from plugins.cli import _our_warnings_as_one_line

    fmt = _our_warnings_as_one_line(warnings.formatwarning)
    ours = fmt("the graph has direction", UserWarning, graph_ext.run.__file__, 93)
    assert ours == "contrastive-plugins: warning: the graph has direction\n"
    theirs = fmt("deprecated", UserWarning, torch.__file__, 7, "x = 1")
    assert theirs == warnings.formatwarning("deprecated", UserWarning, torch.__file__, 7, "x = 1")
    assert theirs.startswith(torch.__file__) and "UserWarning" in theirs
    before = warnings.formatwarning
    assert main(["list"]) == 0 and warnings.formatwarning is before  # restored after the command
