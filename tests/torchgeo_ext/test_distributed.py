"""GLCNet under DDP: a real 2-process gloo group gives the single-process loss and gradient.

Each rank holds half of one global batch (global style vectors and window pairs, with a validity
mask that differs between ranks) and calls ``glcnet_loss(..., gather_distributed=True)``. DDP
averages gradients over ranks, so ``grad_rank / world_size`` must equal the single-process gradient
of the same rows, and the mean of the per-rank losses must equal the single-process loss.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from plugins.testing import run_gloo
from torchgeo_ext.loss import glcnet_loss

pytestmark = pytest.mark.distributed

WORLD, B_LOCAL, K, DIM = 2, 2, 3, 6
# rank 0: 5 of its 6 window pairs valid; rank 1: 3 of 6
VALID = torch.tensor([1, 1, 0, 1, 1, 1, 0, 1, 0, 1, 1, 0], dtype=torch.bool)
CASES = {
    "paper": dict(positive_in_denominator=False, branches="both"),
    "simclr_form": dict(positive_in_denominator=True, branches="both"),
    "local_only": dict(positive_in_denominator=False, branches="local"),
}


def _inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    b, m = WORLD * B_LOCAL, WORLD * B_LOCAL * K
    return {
        "g1": torch.randn(b, DIM, generator=g, dtype=torch.float64),
        "g2": torch.randn(b, DIM, generator=g, dtype=torch.float64),
        "l1": torch.randn(m, DIM, generator=g, dtype=torch.float64),
        "l2": torch.randn(m, DIM, generator=g, dtype=torch.float64),
    }


def _loss(x: dict[str, torch.Tensor], valid: torch.Tensor, gather: bool, case: str):
    return glcnet_loss(
        x["g1"], x["g2"], x["l1"], x["l2"], lam=0.4, temperature=0.5,
        gather_distributed=gather, local_valid=valid, **CASES[case],
    )[0]  # fmt: skip


def _worker(rank: int) -> dict:
    # the gloo group is set up (and torn down) by plugins.testing.run_gloo
    full = _inputs()
    img = slice(rank * B_LOCAL, (rank + 1) * B_LOCAL)
    win = slice(rank * B_LOCAL * K, (rank + 1) * B_LOCAL * K)
    result = {}
    for case in CASES:
        x = {
            k: v[img if k[0] == "g" else win].clone().requires_grad_(True) for k, v in full.items()
        }
        loss = _loss(x, VALID[win], True, case)
        loss.backward()
        result[case] = (loss.detach(), {k: v.grad for k, v in x.items()})
    return result


@pytest.fixture(scope="module")
def ranks() -> list[dict]:
    return run_gloo(_worker, WORLD)


@pytest.mark.parametrize("case", list(CASES))
def test_gathered_glcnet_loss_equals_single_process(ranks, case):
    x = {k: v.clone().requires_grad_(True) for k, v in _inputs().items()}
    loss = _loss(x, VALID, False, case)
    loss.backward()
    torch.testing.assert_close(
        torch.stack([r[case][0] for r in ranks]).mean(), loss.detach(), rtol=1e-10, atol=1e-12
    )
    for key, leaf in x.items():
        if leaf.grad is None:  # a branch left out by the ablation
            assert all(r[case][1][key] is None for r in ranks)
            continue
        grad = torch.cat([r[case][1][key] for r in ranks]) / WORLD  # DDP's average over ranks
        torch.testing.assert_close(grad, leaf.grad, rtol=1e-8, atol=1e-12)
    # the invalid windows really are out of the loss
    assert torch.all(x["l1"].grad[~VALID] == 0)


def test_masked_local_loss_equals_dropping_invalid_rows():
    x = _inputs()
    masked = glcnet_loss(x["g1"], x["g2"], x["l1"], x["l2"], local_valid=VALID)
    dropped = glcnet_loss(x["g1"], x["g2"], x["l1"][VALID], x["l2"][VALID])
    for a, b in zip(masked, dropped, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_torchgeo_fit_under_ddp_with_two_cpu_processes(potsdam_root, tmp_path):
    """``torchgeo fit`` with Lightning's DDP (2 gloo processes) runs GLCNet's gathered step."""
    import subprocess
    import sys

    config = Path(__file__).resolve().parents[2] / "torchgeo_ext" / "configs"
    cmd = [
        sys.executable, "-m", "torchgeo", "fit",
        "--config", str(config / "glcnet_potsdam_pretrain.yaml"),
        "--trainer.fast_dev_run", "2",
        "--trainer.accelerator", "cpu",
        "--trainer.devices", "2",
        "--trainer.strategy", "ddp_spawn",
        "--trainer.default_root_dir", str(tmp_path / "logs"),
        "--data.init_args.root", str(potsdam_root),
        "--data.init_args.patch_size", "48",
        "--data.init_args.batch_size", "2",
        "--data.init_args.num_workers", "0",
        "--model.init_args.backbone", "resnet18",
        "--model.init_args.size", "32",
        "--model.init_args.patch_size", "3",
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
