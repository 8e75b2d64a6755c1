"""Collapse monitoring: statistics against explicit references, the torch tracker, the Lightning
callback inside a real ``fit`` and the ignite hook."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from plugins.monitoring import CollapseMonitor, CollapseTracker, collapse_stats


def _known_rank(n: int, d: int, r: int, seed: int = 0) -> torch.Tensor:
    """(n, d) with exactly r equal non-zero singular values."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(n, r, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(d, r, generator=g, dtype=torch.float64))
    return (u @ v.T).float()


@pytest.mark.parametrize("r", [1, 3, 8, 16])
def test_stats_on_matrices_of_known_rank(r):
    z = _known_rank(200, 16, r)
    stats, ev = collapse_stats(z)
    assert stats["effective_rank"] == pytest.approx(r, rel=1e-4)
    assert stats["nonzero_eigenvalues"] == r
    assert stats["dim"] == 16
    assert ev.shape == (16,) and np.all(np.diff(ev) <= 1e-12)


def test_normalized_std_and_spectrum_against_loops():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(50, 6, generator=g, dtype=torch.float64) + 0.5
    stats, ev = collapse_stats(z)
    zn = z.numpy() / np.linalg.norm(z.numpy(), axis=1, keepdims=True)
    mean = [sum(zn[i, j] for i in range(50)) / 50 for j in range(6)]
    std = [math.sqrt(sum((zn[i, j] - mean[j]) ** 2 for i in range(50)) / 49) for j in range(6)]
    assert stats["normalized_std"] == pytest.approx(sum(std) / 6, rel=1e-10)
    cov = np.zeros((6, 6))
    for i in range(50):
        cov += np.outer(zn[i] - mean, zn[i] - mean) / 50
    np.testing.assert_allclose(ev, np.sort(np.linalg.eigvalsh(cov))[::-1], atol=1e-12)


def test_full_collapse_gives_zero_std_and_rank_one():
    z = torch.randn(1, 8).repeat(32, 1) * torch.rand(32, 1)  # every row on one ray
    stats, _ = collapse_stats(z)
    assert stats["normalized_std"] < 1e-6
    assert stats["nonzero_eigenvalues"] == 0  # identical normalised rows: zero covariance
    assert stats["effective_rank"] == pytest.approx(1.0, abs=1e-3)


def test_dense_features_are_pooled():
    z = torch.randn(20, 5, 4, 4)
    stats, ev = collapse_stats(z)
    assert stats["dim"] == 5 and ev.shape == (5,)


def test_tracker_due_update_plot_save(tmp_path):
    t = CollapseTracker(every_n_steps=3)
    due = [s for s in range(1, 10) if t.due(s)]
    assert due == [3, 6, 9]
    for s in due:
        stats = t.update(s, _known_rank(64, 8, 4, seed=s))
        assert stats["nonzero_eigenvalues"] == 4
    assert not t.due(9)  # already recorded
    paths = t.plot(tmp_path)
    assert {p.name for p in paths} == {
        "collapse_spectrum_representation.png",
        "collapse_curves_representation.png",
    }
    assert all(p.stat().st_size > 1000 for p in paths)
    data = json.loads(t.save(tmp_path).read_text())
    assert [h["step"] for h in data["history"]] == [3, 6, 9] and len(data["spectra"]["9"]) == 8


def test_tracker_rejects_bad_arguments():
    with pytest.raises(ValueError, match="on must be"):
        CollapseTracker(on="projector")
    with pytest.raises(ValueError, match="N >= 2"):
        collapse_stats(torch.randn(1, 4))


# -- Lightning -----------------------------------------------------------------------------------
lightning = pytest.importorskip("lightning")
pl = lightning.pytorch


class _LowRankModule(pl.LightningModule):
    """Representation of rank 3 padded to 8 dims: the monitor must count 3 non-zero eigenvalues."""

    def __init__(self, hook: bool = True, return_outputs: bool = False):
        super().__init__()
        self.net = nn.Linear(6, 3)
        self.return_outputs = return_outputs
        if not hook:
            self.collapse_features = None

    def representation(self, x: torch.Tensor) -> torch.Tensor:
        r = self.net(x)
        return torch.cat([r, torch.zeros(len(r), 5)], 1)

    def collapse_features(self, batch, on="representation"):
        return self.representation(batch[0])

    def training_step(self, batch, batch_idx):
        r = self.representation(batch[0])
        loss = r.pow(2).mean()
        return {"loss": loss, "representation": r} if self.return_outputs else loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _loader(n=64):
    g = torch.Generator().manual_seed(0)
    ds = torch.utils.data.TensorDataset(torch.randn(n, 6, generator=g))
    return torch.utils.data.DataLoader(ds, batch_size=16)


def _trainer(tmp_path, callback, steps=8):
    return pl.Trainer(
        max_steps=steps,
        callbacks=[callback],
        default_root_dir=tmp_path,
        logger=pl.loggers.CSVLogger(tmp_path),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        accelerator="cpu",
        log_every_n_steps=1,
    )


def test_lightning_fit_logs_collapse_metrics_with_probe_batch(tmp_path):
    torch.manual_seed(0)
    probe = (torch.randn(40, 6),)
    mon = CollapseMonitor(every_n_steps=2, probe_batch=probe, run_dir=tmp_path / "run")
    trainer = _trainer(tmp_path, mon, steps=7)
    trainer.fit(_LowRankModule(), _loader())
    assert trainer.logged_metrics["collapse/representation/nonzero_eigenvalues"] == 3
    assert float(trainer.logged_metrics["collapse/representation/effective_rank"]) <= 3 + 1e-6
    assert [h["step"] for h in mon.tracker.history] == [2, 4, 6, 7]  # plus the end-of-fit check
    assert (tmp_path / "run" / "collapse_spectrum_representation.png").exists()
    csv = next(tmp_path.rglob("metrics.csv")).read_text()
    assert "collapse/representation/effective_rank" in csv


def test_lightning_reads_training_step_outputs(tmp_path):
    mon = CollapseMonitor(every_n_steps=1, run_dir=tmp_path)
    trainer = _trainer(tmp_path, mon, steps=3)
    trainer.fit(_LowRankModule(hook=False, return_outputs=True), _loader())
    assert [h["step"] for h in mon.tracker.history] == [1, 2, 3]
    assert all(h["nonzero_eigenvalues"] == 3 for h in mon.tracker.history)


def test_lightning_without_features_raises_clear_error(tmp_path):
    mon = CollapseMonitor(every_n_steps=1)
    with pytest.raises(RuntimeError, match="collapse_features"):
        _trainer(tmp_path, mon, steps=2).fit(_LowRankModule(hook=False), _loader())


def test_ignite_attach():
    ignite = pytest.importorskip("ignite")
    probe = torch.randn(30, 6)
    layer = nn.Linear(6, 4)
    engine = ignite.engine.Engine(lambda e, b: None)
    t = CollapseTracker(every_n_steps=2, on="embedding")
    t.attach(engine, lambda e: layer(probe))
    engine.run([0] * 5, max_epochs=1)
    assert [h["step"] for h in t.history] == [2, 4]
    assert t.history[0]["nonzero_eigenvalues"] == 4
