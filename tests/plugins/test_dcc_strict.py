"""DCC under the strict command (issue 19): declared options, resumable condensation, safe loading."""

import json
from pathlib import Path

import pytest
import torch

from plugins.checkpoint import Checkpointer, load_checkpoint
from plugins.data import ImageTensorDataset
from plugins.errors import UserInputError
from plugins.methods.dcc import DCCConfig, SyntheticSet, condense
from plugins.testing import interrupt_cli_run


def _toy(n_per_class=6, classes=3, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    images = torch.rand(len(labels), 1, size, size, generator=g)
    return ImageTensorDataset(images, labels, [str(c) for c in range(classes)])


def _condense(data, checkpointer=None, callback=None):
    cfg = DCCConfig(batch_real=4, width=4, inner_loops=3, net_epochs=1, batch_train=8)
    return condense(
        data, 2, "dcc", True, 5, cfg, "cpu", seed=3, callback=callback, checkpointer=checkpointer
    )


def test_condense_resumed_after_interrupt_equals_uninterrupted(tmp_path):
    torch.set_num_threads(1)
    data = _toy()
    full = _condense(data)

    def stop_after_two(it, _syn):
        if it == 1:
            raise KeyboardInterrupt

    ckpt = tmp_path / "last.ckpt"
    with pytest.raises(KeyboardInterrupt):
        _condense(data, Checkpointer(ckpt, "dcc", every_steps=1), stop_after_two)
    state = load_checkpoint(ckpt, "dcc")
    assert state["step"] == 2 and len(state["objects"]["losses"]) == 2
    torch.manual_seed(123)  # the resumed run must not depend on the RNG state it starts in
    resumed = _condense(data, Checkpointer(None, "dcc", resume=ckpt))
    assert torch.equal(resumed.images, full.images)
    assert resumed.losses == full.losses and len(full.losses) == 5
    assert resumed.contrastive_steps == full.contrastive_steps > 0


def test_resume_file_of_another_shape_is_one_sentence(tmp_path):
    data = _toy()
    ckpt = tmp_path / "last.ckpt"
    with pytest.raises(KeyboardInterrupt):

        def stop(it, _syn):
            raise KeyboardInterrupt

        _condense(data, Checkpointer(ckpt, "dcc", every_steps=1), stop)
    with pytest.raises(UserInputError, match="does not fit this run"):
        condense(
            _toy(classes=4), 2, "dcc", True, 5,
            DCCConfig(batch_real=4, width=4, inner_loops=3, net_epochs=1), "cpu",
            checkpointer=Checkpointer(None, "dcc", resume=ckpt),
        )  # fmt: skip


def test_synthetic_set_load_is_safe(tmp_path):
    syn = SyntheticSet(
        torch.zeros(2, 1, 4, 4), torch.arange(2), torch.zeros(1), torch.ones(1), ["a", "b"]
    )
    syn.save(tmp_path / "s.pt")
    back = SyntheticSet.load(tmp_path / "s.pt")
    assert torch.equal(back.images, syn.images) and back.classes == ["a", "b"]
    torch.save({"images": torch.zeros(1)}, tmp_path / "partial.pt")
    with pytest.raises(UserInputError, match="lacks labels, mean, std, classes"):
        SyntheticSet.load(tmp_path / "partial.pt")
    torch.save({"x": object()}, tmp_path / "evil.pt")
    with pytest.raises(UserInputError, match="arbitrary Python objects"):
        SyntheticSet.load(tmp_path / "evil.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "s.pt").read_bytes()[:50])
    with pytest.raises(UserInputError, match="truncated or corrupt"):
        SyntheticSet.load(tmp_path / "cut.pt")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "ipc=0"], "--set ipc=0: expected at least 1."),
        (["--set", "metod=dc"], "unknown option --set metod for run dcc (did you mean method?)"),
        (["--set", "method=dcx"], "--set method=dcx: expected one of dcc, dc, random."),
        (["--set", "eval_epochs=abc"], "--set eval_epochs=abc: expected an integer."),
        (["--set", "init=zeros"], "--set init=zeros: expected one of real, noise."),
        (["--set", "image_size=4"], "image_size 4 is too small for a depth-3 ConvNet"),
    ],
)
def test_bad_options_exit_2_with_one_line_and_no_folder(tmp_path, capsys, args, message):
    from plugins.cli import main

    out = tmp_path / "runs"
    assert main(["run", "dcc", "--demo", "--device", "cpu", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


def test_help_lists_the_keys_with_their_defaults(capsys):
    from plugins.cli import main

    assert main(["run", "dcc", "--help"]) == 0
    out = capsys.readouterr().out
    for line in ("ipc=10 (1 with --demo)", "outer_iters=1000 (2 with --demo)", "eval_epochs=1000"):
        assert line in out
    assert main(["reproduce", "dcc", "--help"]) == 0
    out = capsys.readouterr().out
    assert "outer_iters=240" in out and "ipcs=1,10" in out and "\n  ipc=" not in out


def test_reproduce_declares_its_own_keys(tmp_path, capsys):
    from plugins.cli import main

    out = tmp_path / "runs"
    assert main(["reproduce", "dcc", "--set", "ipc=1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    # (the core names the command "run" here; reported to the lead)
    assert "unknown option --set ipc for" in err and "(did you mean ipcs?)" in err
    assert not out.exists() or not any(out.iterdir())


# ------------------------------------------------------------------------------------ kill test

_FAST = [
    "--demo", "--epochs", "12", "--device", "cpu", "--no-progress", "--threads", "1",
    "--set", "width=8", "--set", "image_size=8", "--set", "batch_real=8",
    "--set", "inner_loops=2", "--set", "net_epochs=1", "--set", "warmup_outer=0",
    "--set", "eval_epochs=1", "--set", "n_models=1", "--set", "kernel_steps=1",
    "--set", "probe=2", "--set", "test_limit=50",
]  # fmt: skip


def _args(out: Path, *extra: str) -> list[str]:
    return ["run", "dcc", *_FAST, "--out", str(out), *extra]


@pytest.fixture
def _keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_sigint_keeps_checkpoint_and_resume_reaches_uninterrupted_synthetic_set(
    tmp_path, _keep_threads
):
    from plugins.cli import main

    argv = _args(tmp_path / "cut", "--checkpoint-every", "1")
    cut = interrupt_cli_run(argv, tmp_path / "cut", "dcc-*/last.ckpt", cwd=tmp_path)
    last = cut.last_ckpt
    assert cut.returncode == 130, cut.stderr
    assert cut.stderr.strip().splitlines()[-1] == "contrastive-plugins: interrupted."
    run_dir = last.parent
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "interrupted"
    state = load_checkpoint(last, "dcc")
    assert state["stage"] == "condense" and 1 <= state["step"] < 12

    # the resumed run, in this process
    assert main(_args(tmp_path / "resumed", "--resume", str(last))) == 0
    resumed_dir = next((tmp_path / "resumed").glob("dcc-*"))
    a = SyntheticSet.load(resumed_dir / "synthetic.pt")
    # the uninterrupted reference: the same condensation, its settings read through the same
    # declared options (without the run's evaluation and plots, to keep the test short)
    from plugins.methods.dcc.run import OPTIONS, _condense_config, _load
    from plugins.options import parse_pairs
    from plugins.reporting import RunContext, RunDir

    sets = [_FAST[i + 1] for i, arg in enumerate(_FAST) if arg == "--set"]
    ctx = RunContext(
        "dcc", RunDir(path=tmp_path / "unused"), epochs=12, demo=True,
        options=parse_pairs(sets), option_set=OPTIONS["run"],
    )  # fmt: skip
    cfg = _condense_config(ctx)
    train, _, _ = _load(None, ctx.option("image_size"))
    b = condense(train, ctx.option("ipc"), "dcc", cfg.dsa, cfg.outer_iters, cfg, "cpu", seed=0)
    assert len(b.losses) == 12
    assert torch.equal(a.images, b.images)
    assert json.loads((resumed_dir / "metrics.json").read_text())["status"] == "completed"
    # the resumed run went on condensing from the checkpoint's images
    assert not torch.equal(a.images, state["objects"]["images"]["images"].flatten(0, 1))


# ----------------------------------------------------------------------------- --precision (#20)


def _short(out: Path, *extra: str) -> list[str]:
    """A 2-outer-iteration run: one DC iteration (warm-up), then DCC steps."""
    return _args(out, "--epochs", "2", "--set", "warmup_outer=1", *extra)


def _run_files(out: Path) -> tuple[SyntheticSet, dict]:
    run_dir = next(out.glob("dcc-*"))
    return SyntheticSet.load(run_dir / "synthetic.pt"), json.loads(
        (run_dir / "metrics.json").read_text()
    )


def test_bf16_mixed_runs_the_networks_in_bf16_and_keeps_losses_and_images_float32(
    tmp_path, monkeypatch, _keep_threads
):
    import torch.nn.functional as F
    import yaml

    import plugins.methods.dcc.match as match
    from plugins.cli import main
    from plugins.methods.dcc import ConvNet
    from plugins.methods.dcc.run import _load

    forward, ce, distance = ConvNet.forward, F.cross_entropy, match.gradient_match_distance
    seen: dict[str, list] = {"forward": [], "ce": [], "distance": []}

    def spy_forward(self, x):
        out = forward(self, x)
        seen["forward"].append((out.dtype, torch.is_autocast_enabled("cpu")))
        return out

    def spy_ce(logits, *args, **kwargs):
        loss = ce(logits, *args, **kwargs)
        seen["ce"].append((logits.dtype, loss.dtype, torch.is_autocast_enabled("cpu")))
        return loss

    def spy_distance(g_syn, g_real, *args, **kwargs):
        d = distance(g_syn, g_real, *args, **kwargs)
        dtypes = {g.dtype for g in (*g_syn, *g_real)}
        seen["distance"].append((dtypes, d.dtype, torch.is_autocast_enabled("cpu")))
        return d

    monkeypatch.setattr(ConvNet, "forward", spy_forward)
    monkeypatch.setattr(F, "cross_entropy", spy_ce)
    monkeypatch.setattr(match, "gradient_match_distance", spy_distance)
    assert main(_short(tmp_path / "bf16", "--precision", "bf16-mixed")) == 0
    syn, metrics = _run_files(tmp_path / "bf16")

    # the networks ran under autocast in bfloat16 (condensation, network updates, evaluation)
    amp = [dtype for dtype, on in seen["forward"] if on]
    assert len(amp) > 20 and set(amp) == {torch.bfloat16}
    # ... yet every loss and the matching distance computed in float32, outside autocast
    assert len(seen["ce"]) > 20
    assert all(x == loss == torch.float32 and not on for x, loss, on in seen["ce"])
    # 2 outer iterations x 2 image updates: 1 DC iteration (one distance per class), then DCC
    assert len(seen["distance"]) == 2 * 10 + 2
    assert all(g == {torch.float32} and d == torch.float32 for g, d, _ in seen["distance"])
    assert not any(on for *_, on in seen["distance"])
    # the condensed images stay float32 and moved away from their initial real images
    train, _, _ = _load(None, 8)
    start = condense(train, 1, "random", seed=0)
    assert syn.images.dtype == torch.float32 and syn.images.shape == start.images.shape
    assert (syn.images - start.images).abs().max() > 1e-3
    assert torch.isfinite(syn.images).all()
    assert metrics["status"] == "completed" and 0.0 <= metrics["acc_mean"] <= 1.0
    assert metrics["contrastive_steps"] == 2.0
    config = yaml.safe_load(next((tmp_path / "bf16").glob("dcc-*/config.yaml")).read_text())
    assert config["command"]["precision"] == "bf16-mixed"


def test_default_precision_is_bit_identical_to_32_true(tmp_path, _keep_threads):
    from plugins.cli import main

    assert main(_short(tmp_path / "default")) == 0
    assert main(_short(tmp_path / "fp32", "--precision", "32-true")) == 0
    (a, ma), (b, mb) = _run_files(tmp_path / "default"), _run_files(tmp_path / "fp32")
    assert torch.equal(a.images, b.images) and a.losses == b.losses
    keys = ("acc_mean", "random_acc_mean", "final_matching_loss", "kernel_velocity_last")
    assert {k: ma[k] for k in keys} == {k: mb[k] for k in keys}
    # a no-op context around the forward passes changes no bit either (library path)
    import contextlib

    data = _toy()
    cfg = DCCConfig(batch_real=4, width=4, inner_loops=3, net_epochs=1, batch_train=8)
    plain = condense(data, 2, "dcc", True, 2, cfg, "cpu", seed=3)
    wrapped = condense(data, 2, "dcc", True, 2, cfg, "cpu", seed=3, autocast=contextlib.nullcontext)
    assert torch.equal(plain.images, wrapped.images) and plain.losses == wrapped.losses


@pytest.mark.parametrize(
    "flag, message",
    [
        (["--precision", "64-true"], "dcc does not take --precision 64-true"),
        (["--precision", "16-mixed"], "--precision 16-mixed needs a CUDA device"),
        (["--devices", "2"], "dcc does not take --devices"),
    ],
)
def test_precision_it_cannot_run_is_one_sentence(tmp_path, capsys, flag, message):
    from plugins.cli import main

    out = tmp_path / "runs"
    assert main(_args(out, *flag)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())
