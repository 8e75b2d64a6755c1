"""Stage 1 under DistributedDataParallel: the bundle's iteration goes through ``forward``, so DDP
all-reduces the gradients (a direct ``network.project`` call would bypass the wrapper)."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import torch
from torch.nn.parallel import DistributedDataParallel

from monai_ext.supercon.bundle import Stage1Step
from monai_ext.supercon.model import SuperConNet
from plugins.losses import SupConLoss
from plugins.testing import run_gloo


def _engine(network: torch.nn.Module) -> SimpleNamespace:
    return SimpleNamespace(
        state=SimpleNamespace(device=torch.device("cpu"), output=None),
        network=network,
        optimizer=torch.optim.SGD(network.parameters(), lr=0.0),  # lr 0: inspect the gradients
        loss_function=SupConLoss(temperature=0.07, base_temperature=0.07),
        fire_event=lambda event: None,
    )


def _grads(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


def _worker(rank: int, state: dict, images: torch.Tensor, labels: torch.Tensor) -> dict:
    torch.set_num_threads(1)
    batch = {"image": images[rank], "label": labels[rank]}
    step = Stage1Step(image_size=16)
    local = SuperConNet(2, "micro", 3)
    local.load_state_dict(state)
    ddp_net = copy.deepcopy(local)
    torch.manual_seed(100 + rank)  # same augmentations in both passes
    step(_engine(local), batch)
    engine = _engine(DistributedDataParallel(ddp_net, find_unused_parameters=True))
    torch.manual_seed(7)
    step(engine, batch)  # a first iteration: repeated DDP iterations must work (unused classifier)
    torch.manual_seed(100 + rank)
    out = step(engine, batch)
    return {"local": _grads(local), "ddp": _grads(ddp_net), "loss": out["loss"]}


def test_stage1_step_under_ddp_averages_rank_gradients() -> None:
    torch.manual_seed(0)
    state = SuperConNet(2, "micro", 3).state_dict()
    images = torch.rand(2, 6, 3, 16, 16)  # (rank, batch, C, H, W)
    labels = torch.tensor([[0, 0, 1, 1, 0, 1], [1, 0, 1, 0, 0, 1]])
    r0, r1 = run_gloo(_worker, 2, state, images, labels)
    assert r0["ddp"].keys() == r0["local"].keys() and len(r0["ddp"]) > 0
    for name in r0["ddp"]:
        mean = (r0["local"][name] + r1["local"][name]) / 2
        torch.testing.assert_close(r0["ddp"][name], r1["ddp"][name], rtol=0, atol=0)
        torch.testing.assert_close(r0["ddp"][name], mean, rtol=1e-5, atol=1e-7)
    # the ranks' own gradients differ, so the equality above is the all-reduce, not a coincidence
    assert not torch.allclose(r0["local"]["head.net.0.weight"], r1["local"]["head.net.0.weight"])
    assert "classifier.weight" not in r0["ddp"]  # stage 1 trains encoder and head only
