"""``--precision bf16-mixed`` for ARIEL and GRACE (issue #20): their own full-graph loop runs the
encoder under autocast, the sparse aggregation and the losses stay float32; 32-true is unchanged."""

from __future__ import annotations

import json

import pytest
import torch

import graph_ext.model as graph_model
from plugins.cli import main


def _run(tmp_path, method: str, *extra: str) -> dict:
    out = tmp_path / method / (extra[-1] if extra else "default")
    argv = ["run", method, "--demo", "--epochs", "3", "--device", "cpu", "--no-progress",
            "--threads", "1", "--out", str(out), *extra]  # fmt: skip
    assert main(argv) == 0
    (run,) = out.iterdir()
    return json.loads((run / "metrics.json").read_text())


@pytest.mark.parametrize("method", ["ariel", "grace"])
def test_bf16_mixed_runs_the_encoder_in_bf16_and_the_loss_in_float32(tmp_path, monkeypatch, method):
    loss_fn, seen = graph_model.ARIEL.loss, []

    def spy(self, z1, z2):
        loss = loss_fn(self, z1, z2)
        seen.append((z1.dtype, loss.dtype, torch.is_autocast_enabled("cpu")))
        return loss

    monkeypatch.setattr(graph_model.ARIEL, "loss", spy)
    metrics = _run(tmp_path, method, "--precision", "bf16-mixed")
    assert seen and all(autocast for _, _, autocast in seen)
    assert any(z == torch.bfloat16 for z, _, _ in seen)  # the projections came out of autocast
    assert all(loss == torch.float32 for _, loss, _ in seen)
    assert metrics["status"] == "completed" and 0 < metrics["acc_mean"] <= 100


def test_default_precision_is_32_true_bit_for_bit(tmp_path):
    a = _run(tmp_path, "ariel")
    b = _run(tmp_path, "ariel", "--precision", "32-true")
    keys = [k for k in a if "seconds" not in k and k != "status"]
    assert {k: a[k] for k in keys} == {k: b[k] for k in keys}


def test_64_true_is_refused_in_one_sentence(tmp_path, capsys):
    assert main(["run", "ariel", "--demo", "--precision", "64-true", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "not 64-true" in err and len(err.splitlines()) == 1
