"""The command's entry points: demo run writes its files; the spec stays import-light."""

import json
import subprocess
import sys

import pytest
import torch

from graph_ext.run import run_ariel, run_grace
from plugins.checkpoint import load_checkpoint
from plugins.reporting import RunContext, RunDir


@pytest.mark.parametrize("method,fn", [("ariel", run_ariel), ("grace", run_grace)])
def test_demo_run_writes_config_metrics_checkpoint_and_plots(tmp_path, method, fn) -> None:
    ctx = RunContext(
        method,
        RunDir(path=tmp_path / method),
        device=torch.device("cpu"),
        demo=True,
        progress=False,
        epochs=15,
    )
    with pytest.warns(UserWarning, match="fewer than sample_size"):
        metrics = fn(ctx)
    files = {p.name for p in (tmp_path / method).iterdir()}
    assert {
        "config.yaml",
        "metrics.json",
        "checkpoint.pt",
        "loss.png",
        "spectrum.png",
        "embedding.png",
    } <= files
    if method == "ariel":
        assert "attack_flips.png" in files
    saved = json.loads((tmp_path / method / "metrics.json").read_text())
    assert 0.0 <= saved["acc_mean"] <= 100.0 and saved["acc_mean"] == pytest.approx(
        metrics["acc_mean"]
    )
    state = load_checkpoint(tmp_path / method / "checkpoint.pt")
    assert state["config"]["eps"] == (0.0 if method == "grace" else 0.5)


def test_spec_and_package_import_without_torch_geometric() -> None:
    code = (
        "import sys, graph_ext.spec as s, graph_ext; "
        "assert s.ARIEL.name == 'ariel' and s.GRACE.name == 'grace'; "
        "assert 'torch_geometric' not in sys.modules and 'torch' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
