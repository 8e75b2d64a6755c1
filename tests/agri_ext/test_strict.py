"""CLAWS under the strict command (issue 19): declared options, resumable training, progress."""

import json
from pathlib import Path

import pytest
import torch

from agri_ext.config import CLAWSConfig
from agri_ext.train import steps_per_epoch, train_claws
from plugins.checkpoint import Checkpointer, load_checkpoint
from plugins.data import ImageTensorDataset
from plugins.errors import UserInputError
from plugins.testing import interrupt_cli_run


def _plants(n=24, size=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g) * torch.tensor([0.5, 0.4, 0.3])[:, None, None]
    x[:, :, 3:8, 3:8] = torch.tensor([0.2, 0.7, 0.2])[:, None, None]
    labels = torch.arange(n) % 3
    return ImageTensorDataset(x, labels, ["a", "b", "c"])


class _StopAfter(Checkpointer):
    """Saves like a Checkpointer, then interrupts the loop after step ``stop``."""

    def __init__(self, path, stop):
        super().__init__(path, "claws", every_steps=1)
        self.stop = stop

    def step(self, step, **objects):
        super().step(step, **objects)
        if step == self.stop:
            raise KeyboardInterrupt


@pytest.mark.parametrize("mask, within", [("pixel", "mask"), ("feature", "batch")])
def test_train_resumed_after_interrupt_equals_uninterrupted(tmp_path, mask, within):
    data = _plants()
    cfg = CLAWSConfig(
        epochs=3, batch_size=8, widths=(4, 8, 8), mask=mask, within_class=within, image_size=12
    )
    full, full_losses, _ = train_claws(data, cfg, device="cpu", seed=1, progress=False)
    ckpt = tmp_path / "last.ckpt"
    with pytest.raises(KeyboardInterrupt):
        train_claws(
            data, cfg, device="cpu", seed=1, progress=False, checkpointer=_StopAfter(ckpt, 2)
        )
    assert load_checkpoint(ckpt, "claws")["step"] == 2
    torch.manual_seed(99)  # the resumed run must not depend on the RNG state it starts in
    resumed, losses, _ = train_claws(
        data, cfg, device="cpu", seed=1, progress=False,
        checkpointer=Checkpointer(None, "claws", resume=ckpt),
    )  # fmt: skip
    assert losses == full_losses and len(losses) == 3 * 3
    for (name, a), b in zip(resumed.state_dict().items(), full.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_resume_with_other_settings_is_one_sentence(tmp_path):
    data = _plants()
    cfg = CLAWSConfig(epochs=2, batch_size=8, widths=(4, 8, 8), image_size=12)
    ckpt = tmp_path / "last.ckpt"
    with pytest.raises(KeyboardInterrupt):
        train_claws(data, cfg, device="cpu", progress=False, checkpointer=_StopAfter(ckpt, 1))
    wider = CLAWSConfig(epochs=2, batch_size=8, widths=(8, 8, 8), image_size=12)
    with pytest.raises(UserInputError, match="does not fit this run's model or settings"):
        train_claws(
            data, wider, device="cpu", progress=False,
            checkpointer=Checkpointer(None, "claws", resume=ckpt),
        )  # fmt: skip
    with pytest.raises(UserInputError, match="written by method 'claws', not 'dcc'"):
        train_claws(
            data, cfg, device="cpu", progress=False,
            checkpointer=Checkpointer(None, "dcc", resume=ckpt),
        )  # fmt: skip


def test_steps_per_epoch_counts_the_batches_drawn():
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([0] * 5 + [1] * 9 + [2] * 1)
    from agri_ext.sampling import class_homogeneous_batches, random_batches

    for bs in (2, 4, 7, 14, 15, 16):
        assert steps_per_epoch(labels, bs, False) == len(random_batches(len(labels), bs, g))
        assert steps_per_epoch(labels, bs, True) == len(class_homogeneous_batches(labels, bs, g))


def test_progress_bar_moves_per_step(monkeypatch):
    import agri_ext.train

    bars = []

    def spy(*args, **kwargs):
        bars.append(real(*args, **kwargs))
        return bars[-1]

    real = agri_ext.train.progress_bar
    monkeypatch.setattr(agri_ext.train, "progress_bar", spy)
    data = _plants(n=32)
    cfg = CLAWSConfig(epochs=2, batch_size=8, widths=(4, 4, 4), image_size=12, mask="none")
    train_claws(data, cfg, device="cpu", progress=True)
    assert len(bars) == 1 and bars[0].total == 8 and bars[0].n == 8  # 2 epochs x 4 batches


@pytest.mark.parametrize(
    "command, args, message",
    [
        ("run", ["--set", "mask=pixle"], "--set mask=pixle: expected one of pixel, feature, none."),
        ("run", ["--set", "crop_scale=0.5"], "--set crop_scale=0.5: expected 2 comma-separated values."),
        ("run", ["--set", "widths=8,0"], "--set widths=8,0: expected at least 1."),
        ("run", ["--set", "batchsize=16"], "unknown option --set batchsize for run claws (did you mean batch_size?)"),
        ("run", ["--set", "train_limit=1"], "--set train_limit=1: expected at least 2."),
        ("reproduce", ["--set", "seeds=0"], "--set seeds=0: expected at least 1."),
        ("reproduce", ["--set", "variants=SimCLR,BYOL"], "--set variants=SimCLR,BYOL: expected one of SimCLR"),
        ("reproduce", ["--set", "mask=none"], "unknown option --set mask"),
        ("run", ["--demo", "--set", "arch=resnet9"], "resnet9"),
    ],
)  # fmt: skip
def test_bad_options_exit_2_with_one_line_and_no_folder(tmp_path, capsys, command, args, message):
    from plugins.cli import main

    out = tmp_path / "runs"
    assert main([command, "claws", "--device", "cpu", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


def test_help_lists_the_keys_with_their_defaults(capsys):
    from plugins.cli import main

    assert main(["run", "claws", "--help"]) == 0
    out = capsys.readouterr().out
    assert "mask=pixel" in out and "widths=32,64,128 (16,32,64 with --demo)" in out
    assert "train_limit=none (400 with --demo)" in out
    assert main(["reproduce", "claws", "--help"]) == 0
    out = capsys.readouterr().out
    assert "widths=16,32,64" in out and "image_size=24" in out and "seeds=3" in out
    assert "mask=" not in out.replace("min_mask_fraction=", "")


# ------------------------------------------------------------------------------------ kill test

_FAST = [
    "--demo", "--epochs", "20", "--device", "cpu", "--no-progress", "--threads", "1",
    "--set", "widths=4,8,8", "--set", "train_limit=64", "--set", "test_limit=60",
    "--set", "batch_size=32",
]  # fmt: skip


def _args(out: Path, *extra: str) -> list[str]:
    return ["run", "claws", *_FAST, "--out", str(out), *extra]


@pytest.fixture
def _keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_sigint_keeps_checkpoint_and_resume_reaches_uninterrupted_parameters(
    tmp_path, _keep_threads
):
    from plugins.cli import main

    argv = _args(tmp_path / "cut", "--checkpoint-every", "1")
    cut = interrupt_cli_run(argv, tmp_path / "cut", "claws-*/last.ckpt", cwd=tmp_path)
    last = cut.last_ckpt
    assert cut.returncode == 130, cut.stderr
    assert cut.stderr.strip().splitlines()[-1] == "contrastive-plugins: interrupted."
    assert json.loads((last.parent / "metrics.json").read_text())["status"] == "interrupted"
    state = load_checkpoint(last, "claws")  # Lightning's: CLAWS trains through plugins.engine
    assert 1 <= state["global_step"] < 2 * 20  # 64 images in batches of 32
    assert len(state["callbacks"]["LossRecorder"]["losses"]) == state["global_step"]

    # the resumed run, in this process
    assert main(_args(tmp_path / "resumed", "--resume", str(last))) == 0
    resumed_dir = next((tmp_path / "resumed").glob("claws-*"))
    a = load_checkpoint(resumed_dir / "checkpoint.pt")["model"]
    # the uninterrupted reference: the same training, its settings and data read through the
    # same declared options (without the run's evaluation and plots, to keep the test short)
    from agri_ext.data import load_claws_data
    from agri_ext.run import OPTIONS, _config, _limit, fit_claws
    from plugins.options import parse_pairs
    from plugins.reporting import RunContext, RunDir
    from plugins.threads import cpu_threads

    sets = [_FAST[i + 1] for i, arg in enumerate(_FAST) if arg == "--set"]
    ctx = RunContext(
        "claws", RunDir(path=tmp_path / "unused"), epochs=20, demo=True,
        options=parse_pairs(sets), option_set=OPTIONS["run"],
    )  # fmt: skip
    cfg = _config(ctx)
    train_set, _, _ = load_claws_data(None, size=cfg.image_size, seed=0)
    train_set = _limit(train_set, ctx.option("train_limit"), 0)
    ref = RunContext("claws", RunDir(path=tmp_path / "ref"), device=torch.device("cpu"),
                     progress=False, checkpoint_every=(None, None))  # fmt: skip
    with cpu_threads(1):
        model, losses, _ = fit_claws(ref, train_set, cfg, seed=0)
    assert len(losses) == 2 * 20
    b = model.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert json.loads((resumed_dir / "metrics.json").read_text())["status"] == "completed"
    # the resumed run went on training from the checkpoint's parameters
    saved = {k.removeprefix("model."): v for k, v in state["state_dict"].items()}
    assert any(not torch.equal(saved[k], a[k]) for k in a if a[k].is_floating_point())
