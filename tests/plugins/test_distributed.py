"""A real 2-process gloo group: ``gather_distributed=True`` equals one process on the whole batch.

Each rank holds its slice of one global batch as leaf tensors, computes the loss with
``gather_distributed=True`` and back-propagates. DDP averages gradients over the world size, so
``grad_rank / world_size`` must equal the single-process gradient of the same rows, and the mean of
the per-rank losses must equal the single-process loss.
"""

from __future__ import annotations

import pytest
import torch

from plugins import distributed as D
from plugins.heads import FeatureQueue
from plugins.losses import info_nce, nt_xent, sup_con
from plugins.testing import run_gloo

pytestmark = pytest.mark.distributed

WORLD = 2
N_LOCAL, DIM, VIEWS = 3, 8, 2
QUEUE_SIZE, KEYS_PER_RANK = 10, 3


def _inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    n = WORLD * N_LOCAL
    return {
        "z1": torch.randn(n, DIM, generator=g, dtype=torch.float64),
        "z2": torch.randn(n, DIM, generator=g, dtype=torch.float64),
        "neg": torch.randn(5, DIM, generator=g, dtype=torch.float64),
        "f": torch.randn(n, VIEWS, DIM, generator=g, dtype=torch.float64),
        "labels": torch.tensor([0, 1, 0, 2, 1, 1]),
        "keys": torch.randn(3, WORLD * KEYS_PER_RANK, DIM, generator=g),
    }


def _losses(x: dict[str, torch.Tensor], gather: bool) -> dict[str, callable]:
    return {
        "nt_xent": lambda a, b: nt_xent(a, b, 0.2, gather_distributed=gather),
        "nt_xent_neg_only": lambda a, b: nt_xent(a, b, 0.2, False, gather_distributed=gather),
        "info_nce": lambda a, b: info_nce(a, b, 0.2, gather_distributed=gather),
        "info_nce_queue": lambda a, b: info_nce(a, b, 0.2, x["neg"], gather_distributed=gather),
        # rank 0 holds 2 valid pairs, rank 1 holds 3: the count must be averaged over ranks
        "nt_xent_valid": lambda a, b: nt_xent(
            a, b, 0.2, valid=_valid_rows(a, gather), gather_distributed=gather
        ),
        "nt_xent_neg_only_valid": lambda a, b: nt_xent(
            a, b, 0.2, False, valid=_valid_rows(a, gather), gather_distributed=gather
        ),
    }


VALID = torch.tensor([True, False, True, True, True, True])


def _valid_rows(a: torch.Tensor, gather: bool) -> torch.Tensor:
    """The global validity mask, or this rank's slice of it."""
    if not gather:
        return VALID
    return VALID[D.rank() * N_LOCAL : (D.rank() + 1) * N_LOCAL]


def _sup_con_cases(gather: bool) -> dict[str, callable]:
    return {
        "sup_con_labels": lambda f, y: sup_con(f, y, 0.1, 0.07, gather_distributed=gather),
        "sup_con_simclr": lambda f, y: sup_con(f, None, 0.1, 0.07, gather_distributed=gather),
        "sup_con_one": lambda f, y: sup_con(f, y, 0.1, 0.07, "one", gather_distributed=gather),
        # one view: label 2 (rank 1) has no positive, so ranks hold 3 and 2 valid anchors
        "sup_con_missing_positive": lambda f, y: sup_con(
            f[:, :1], y, 0.1, 0.07, gather_distributed=gather
        ),
    }


def _worker(rank: int) -> dict:
    # the gloo group is set up (and torn down) by plugins.testing.run_gloo
    x = _inputs()
    rows = slice(rank * N_LOCAL, (rank + 1) * N_LOCAL)
    result: dict[str, object] = {"rank": D.rank(), "world_size": D.world_size()}
    for name, fn in _losses(x, gather=True).items():
        a = x["z1"][rows].clone().requires_grad_(True)
        b = x["z2"][rows].clone().requires_grad_(True)
        loss = fn(a, b)
        loss.backward()
        result[name] = (loss.detach(), a.grad, b.grad)
    for name, fn in _sup_con_cases(gather=True).items():
        f = x["f"][rows].clone().requires_grad_(True)
        loss = fn(f, x["labels"][rows])
        loss.backward()
        result[name] = (loss.detach(), f.grad)

    queue = FeatureQueue(QUEUE_SIZE, DIM)
    queue.features.normal_()  # deliberately different start on each rank: every slot is overwritten
    slots = []
    for step in range(x["keys"].shape[0]):
        keys = x["keys"][step, rank * KEYS_PER_RANK : (rank + 1) * KEYS_PER_RANK]
        tags = torch.arange(KEYS_PER_RANK) + 100 * step + 10 * rank
        slots.append(queue.enqueue(keys, tags))
    result["queue"] = (
        queue.features.clone(),
        queue.tags.clone(),
        int(queue.ptr),
        torch.stack(slots),
    )
    return result


@pytest.fixture(scope="module")
def ranks() -> list[dict]:
    return run_gloo(_worker, WORLD)


def test_ranks_see_a_real_group(ranks):
    assert [r["rank"] for r in ranks] == [0, 1]
    assert all(r["world_size"] == WORLD for r in ranks)


@pytest.mark.parametrize("name", list(_losses(_inputs(), False)))
def test_pair_losses_match_single_process(ranks, name):
    x = _inputs()
    a, b = x["z1"].clone().requires_grad_(True), x["z2"].clone().requires_grad_(True)
    loss = _losses(x, gather=False)[name](a, b)
    loss.backward()
    mean_rank_loss = torch.stack([r[name][0] for r in ranks]).mean()
    torch.testing.assert_close(mean_rank_loss, loss.detach(), rtol=1e-10, atol=1e-12)
    grad_a = torch.cat([r[name][1] for r in ranks]) / WORLD  # DDP's average over ranks
    grad_b = torch.cat([r[name][2] for r in ranks]) / WORLD
    torch.testing.assert_close(grad_a, a.grad, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(grad_b, b.grad, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("name", list(_sup_con_cases(False)))
def test_sup_con_matches_single_process(ranks, name):
    x = _inputs()
    f = x["f"].clone().requires_grad_(True)
    loss = _sup_con_cases(gather=False)[name](f, x["labels"])
    loss.backward()
    mean_rank_loss = torch.stack([r[name][0] for r in ranks]).mean()
    torch.testing.assert_close(mean_rank_loss, loss.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(
        torch.cat([r[name][1] for r in ranks]) / WORLD, f.grad, rtol=1e-8, atol=1e-12
    )


def test_feature_queue_is_identical_on_every_rank(ranks):
    feats0, tags0, ptr0, slots0 = ranks[0]["queue"]
    for feats, tags, ptr, slots in (r["queue"] for r in ranks[1:]):
        torch.testing.assert_close(feats, feats0, rtol=0, atol=0)
        assert torch.equal(tags, tags0) and ptr == ptr0 and torch.equal(slots, slots0)
    # FIFO over the gathered keys (rank order): 3 steps x 6 keys into 10 slots
    keys = _inputs()["keys"].reshape(-1, DIM)
    expected = torch.nn.functional.normalize(keys, dim=1)
    order = torch.arange(keys.shape[0]) % QUEUE_SIZE
    for i, slot in enumerate(order.tolist()[-QUEUE_SIZE:], start=keys.shape[0] - QUEUE_SIZE):
        torch.testing.assert_close(feats0[slot], expected[i])
    assert ptr0 == keys.shape[0] % QUEUE_SIZE
    step_rank_tags = [
        100 * s + 10 * r + k for s in range(3) for r in range(WORLD) for k in range(KEYS_PER_RANK)
    ]
    assert tags0[order[-QUEUE_SIZE:]].tolist() == step_rank_tags[-QUEUE_SIZE:]
