"""Pieces the MONAI bundle ``monai_ext/bundles/multidomain_mr_seg`` plugs into MONAI's engines.

``SupervisedTrainer``/``SupervisedEvaluator`` accept an ``iteration_update(engine, batch)``; the
multi-domain step needs one because the loss is a sum over domains with different class counts
plus the domain regulariser, and inference must pick each volume's head.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys

from monai_ext.multidomain.loss import MultiDomainLoss

__all__ = ["MultiDomainTrainStep", "DomainInferStep", "bundle_dir", "domains_of"]


def bundle_dir() -> Path:
    """Folder of the installed bundle (``configs/``, ``docs/``)."""
    return Path(__file__).resolve().parent.parent / "bundles" / "multidomain_mr_seg"


def domains_of(items: Sequence[dict]) -> list[int]:
    """Domain id of every datalist item (for :class:`DomainBalancedBatchSampler`)."""
    return [int(item["domain"]) for item in items]


class MultiDomainTrainStep:
    """``iteration_update`` for ``SupervisedTrainer``: forward_multi, ``sum_d DiceCE_d + lam L_con``, step.

    Args:
        loss_function: a :class:`MultiDomainLoss`.
    """

    def __init__(self, loss_function: MultiDomainLoss):
        self.loss_function = loss_function

    def __call__(self, engine: Any, batch: dict) -> dict:
        device = engine.state.device
        image = batch[Keys.IMAGE].to(device)
        label = batch[Keys.LABEL].to(device)
        domain = torch.as_tensor(batch["domain"]).to(device).long().reshape(-1)
        net = engine.network
        net.train()
        engine.optimizer.zero_grad(set_to_none=True)
        logits, emb = net.forward_multi(image, domain, union=getattr(net, "shared_head", False))
        engine.state.output = {Keys.IMAGE: image, Keys.LABEL: label}
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        loss, parts = self.loss_function(logits, label, domain, emb, model=net)
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        loss.backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        engine.optimizer.step()
        engine.state.output.update({Keys.LOSS: loss.detach(), **parts})
        # MONAI's handlers (decollate, postprocessing) hang on this event of the built-in iteration
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


class DomainInferStep:
    """``iteration_update`` for ``SupervisedEvaluator``: run the inferer with each batch's own domain.

    Batches must hold one domain (validation/inference loaders use batch size 1).
    """

    def __call__(self, engine: Any, batch: dict) -> dict:
        device = engine.state.device
        image = batch[Keys.IMAGE].to(device)
        domain = torch.as_tensor(batch["domain"]).reshape(-1)
        if torch.unique(domain).numel() != 1:
            raise ValueError("inference batches must hold a single domain; use batch_size 1")
        net = engine.network
        net.eval()
        with torch.no_grad():
            # bind the domain into the callable: SliceInferer drops extra forward kwargs (MONAI 1.6)
            pred = engine.inferer(image, functools.partial(net, domain=int(domain[0])))
        out = {Keys.IMAGE: image, Keys.PRED: pred}
        if isinstance(
            batch.get(Keys.LABEL), torch.Tensor
        ):  # inference lists may name unloaded labels
            out[Keys.LABEL] = batch[Keys.LABEL].to(device)
        engine.state.output = out
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
