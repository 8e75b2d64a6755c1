"""Safe checkpoint loading and resumable periodic checkpoints."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
from torch import nn

from plugins.checkpoint import Checkpointer, load_checkpoint, parse_every
from plugins.errors import UserInputError


class _Arbitrary:  # module level so that torch.save can pickle it
    def __init__(self) -> None:
        self.x = 1


def test_load_checkpoint_refuses_missing_corrupt_foreign_and_unsafe_files(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"method": "simclr", "w": torch.ones(2)}, good)
    assert torch.equal(load_checkpoint(good, "simclr")["w"], torch.ones(2))

    with pytest.raises(UserInputError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:40])
    with pytest.raises(UserInputError, match="truncated or corrupt"):
        load_checkpoint(cut)
    with pytest.raises(UserInputError, match="written by method 'simclr', not 'hcsc'"):
        load_checkpoint(good, "hcsc")
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"obj": _Arbitrary()}, unsafe)
    with pytest.raises(UserInputError, match="holds arbitrary Python objects.*_Arbitrary"):
        load_checkpoint(unsafe)
    listed = tmp_path / "list.pt"
    torch.save([1, 2], listed)
    with pytest.raises(UserInputError, match="holds a list, not a checkpoint dict"):
        load_checkpoint(listed)


@pytest.mark.parametrize(
    "text,expected",
    [("50", (50, None)), ("90s", (None, 90.0)), ("5m", (None, 300.0)), ("0", (None, None))],
)
def test_parse_every(text, expected):
    assert parse_every(text) == expected


def test_parse_every_refuses_nonsense():
    with pytest.raises(UserInputError, match="--checkpoint-every expects"):
        parse_every("soon")


def _train(total: int, ckpt: Checkpointer | None, stop_after: int | None = None) -> nn.Module:
    """A loop whose every step draws from the global RNG, a generator and numpy: resuming must
    restore all three to give the same parameters."""
    torch.manual_seed(0)
    np.random.seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.3), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, 3, 0.5)
    gen = torch.Generator().manual_seed(1)
    history: list[float] = []
    counts: dict[str, int] = collections.defaultdict(int)
    start = (
        ckpt.restore(total, model=model, opt=opt, sched=sched, gen=gen, history=history)
        if ckpt
        else 0
    )
    for step in range(start, total):
        x = torch.randn(16, 4, generator=gen) + float(np.random.rand())
        loss = model(x).pow(2).mean() + torch.rand(()) * 0  # global RNG through dropout
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        history.append(float(loss.detach()))
        counts["steps"] += 1
        if ckpt:
            ckpt.step(step + 1, model=model, opt=opt, sched=sched, gen=gen, history=history)
        if stop_after is not None and step + 1 == stop_after:
            break
    model.history = history  # type: ignore[attr-defined]
    return model


def test_resumed_loop_reaches_the_uninterrupted_parameters(tmp_path):
    full = _train(10, None)
    path = tmp_path / "last.ckpt"
    _train(10, Checkpointer(path, "toy", every_steps=1, every_seconds=None), stop_after=4)
    assert load_checkpoint(path, "toy")["step"] == 4
    resumed = _train(10, Checkpointer(None, "toy", resume=path))
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert resumed.history == full.history


def test_resume_refuses_other_methods_and_final_checkpoints(tmp_path):
    path = tmp_path / "last.ckpt"
    _train(3, Checkpointer(path, "toy", every_steps=1, every_seconds=None))
    with pytest.raises(UserInputError, match="written by method 'toy', not 'other'"):
        Checkpointer(None, "other", resume=path).load_resume()
    final = tmp_path / "checkpoint.pt"
    torch.save({"model": {}}, final)
    with pytest.raises(UserInputError, match="not a training-state checkpoint"):
        Checkpointer(None, "toy", resume=final).load_resume()
    with pytest.raises(UserInputError, match="past this run's 2 steps"):
        _train(2, Checkpointer(None, "toy", resume=path))


def test_a_later_stage_checkpoint_skips_the_earlier_stage(tmp_path):
    path = tmp_path / "last.ckpt"
    stages = ("stage 1", "stage 2")
    ckpt = Checkpointer(path, "toy", every_steps=1, every_seconds=None, stages=stages)
    second = ckpt.for_stage("stage 2")
    w = nn.Linear(2, 2)
    second.step(3, model=w)
    resumed = Checkpointer(None, "toy", resume=path, stages=stages)
    assert resumed.for_stage("stage 1").restore(7, model=nn.Linear(2, 2)) == 7  # done: skip
    fresh = nn.Linear(2, 2)
    assert resumed.for_stage("stage 2").restore(5, model=fresh) == 3
    assert torch.equal(fresh.weight, w.weight)
