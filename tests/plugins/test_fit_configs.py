"""``contrastive-plugins fit --config``: every shipped YAML of the generic methods and CLAWS trains
one step through LightningCLI on real data (``fast_dev_run``), and bad input is one sentence."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from plugins.cli import main
from plugins.data import shared_path
from plugins.engine import run_lightning_cli

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted(ROOT.glob("plugins/methods/*/configs/*.yaml")) + sorted(
    ROOT.glob("agri_ext/configs/*.yaml")
)


def _needs_data(path: Path) -> bool:
    return "cifar10" in path.read_text() and shared_path("cifar10", required=False) is None


def test_every_generic_method_ships_a_config():
    named = {p.parent.parent.name for p in CONFIGS if p.parts[-4] == "methods"}
    assert {"simclr", "directclr", "hcsc"} <= named
    assert any(p.parts[-3] == "agri_ext" for p in CONFIGS)


@pytest.mark.parametrize("config", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_config_trains_one_step(config, tmp_path, monkeypatch):
    if _needs_data(config):
        pytest.skip("../shared/data/cifar10 is absent")
    monkeypatch.chdir(tmp_path)
    cli = run_lightning_cli(["--config", str(config), "--trainer.fast_dev_run", "1",
                             "--trainer.default_root_dir", str(tmp_path),
                             "--trainer.enable_progress_bar", "false"])  # fmt: skip
    assert cli.trainer.global_step == 1
    assert torch.isfinite(cli.trainer.callback_metrics["train_loss"])


@pytest.mark.parametrize(
    "extra, says",
    [
        (["--trainer.accelerator", "gpu"], "the trainer cannot start: No supported gpu backend"),
        (["--model.init_args.temperature", "warm"], "temperature"),
        (["--trainer.max_epocs", "2"], "max_epocs"),
    ],
    ids=["gpu", "type", "unknown-key"],
)
def test_bad_fit_input_is_one_sentence(tmp_path, capsys, monkeypatch, extra, says):
    if extra[1] == "gpu" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.chdir(tmp_path)
    config = ROOT / "plugins/methods/simclr/configs/simclr_digits.yaml"
    assert main(["fit", "--config", str(config), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_fit_help_is_lightning_clis(capsys):
    assert main(["fit", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--trainer.strategy" in out and "--config" in out
