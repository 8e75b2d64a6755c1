"""Pieces the MONAI bundle ``monai_ext/bundles/multidomain_mr_seg`` plugs into MONAI's engines.

``SupervisedTrainer``/``SupervisedEvaluator`` accept an ``iteration_update(engine, batch)``; the
multi-domain step needs one because the loss is a sum over domains with different class counts
plus the domain regulariser, and inference must pick each volume's head.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.engines.utils import IterationEvents
from monai.transforms import MapTransform
from monai.utils import CommonKeys as Keys

from monai_ext.bundle_errors import check_overrides, did_you_mean, install_one_line_errors
from monai_ext.multidomain.data import check_finite_volume
from monai_ext.multidomain.loss import MultiDomainLoss
from plugins.errors import UserInputError

__all__ = [
    "MultiDomainTrainStep",
    "DomainInferStep",
    "ValidateEveryAndAtEnd",
    "CheckFinited",
    "check_config",
    "bundle_dir",
    "domains_of",
]


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

    Args:
        roi_sizes: each domain's 2-D window (the domain table's ``roi``): a ``SliceInferer`` of that
            window per domain replaces the engine's inferer. ``None``: the engine's inferer.
        sw_batch_size: slices per forward pass of those inferers.
        slice_axes: each domain's ``slice_axis`` (default: 2 for every domain).
    """

    def __init__(
        self,
        roi_sizes: Sequence[Sequence[int]] | None = None,
        sw_batch_size: int = 16,
        slice_axes: Sequence[int] | None = None,
    ):
        self.inferers = None
        if roi_sizes is not None:
            from monai.inferers import SliceInferer

            axes = list(slice_axes) if slice_axes is not None else [2] * len(roi_sizes)
            self.inferers = [
                SliceInferer(spatial_dim=a, roi_size=list(r), sw_batch_size=sw_batch_size)
                for r, a in zip(roi_sizes, axes, strict=True)
            ]

    @classmethod
    def for_table(cls, table: Sequence[Any], sw_batch_size: int = 16) -> DomainInferStep:
        """One ``SliceInferer`` per row of the domain table: its ``roi`` across its ``slice_axis``."""
        return cls([d.roi for d in table], sw_batch_size, [d.slice_axis for d in table])

    def __call__(self, engine: Any, batch: dict) -> dict:
        device = engine.state.device
        image = batch[Keys.IMAGE].to(device)
        domain = torch.as_tensor(batch["domain"]).reshape(-1)
        if torch.unique(domain).numel() != 1:
            raise ValueError("inference batches must hold a single domain; use batch_size 1")
        net = engine.network
        net.eval()
        k = int(domain[0])
        inferer = engine.inferer if self.inferers is None else self.inferers[k]
        with torch.no_grad():
            # bind the domain into the callable: SliceInferer drops extra forward kwargs (MONAI 1.6)
            pred = inferer(image, functools.partial(net, domain=k))
        out = {Keys.IMAGE: image, Keys.PRED: pred}
        if isinstance(
            batch.get(Keys.LABEL), torch.Tensor
        ):  # inference lists may name unloaded labels
            out[Keys.LABEL] = batch[Keys.LABEL].to(device)
        engine.state.output = out
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


class ValidateEveryAndAtEnd:
    """Run ``validator`` every ``interval`` epochs and after the last epoch, whatever ``max_epochs``
    and ``interval`` are, so that the key-metric ``CheckpointSaver`` always writes a model
    (MONAI's ``ValidationHandler`` alone skips it when ``max_epochs < interval``).

    Args:
        validator: the ``SupervisedEvaluator``.
        interval: validate every this many epochs (at least 1).
    """

    def __init__(self, validator: Any, interval: int):
        if int(interval) < 1:
            raise UserInputError(f"val_interval must be at least 1, got {interval}.")
        self.validator = validator
        self.interval = int(interval)

    def due(self, engine: Any, epoch: int) -> bool:
        return epoch % self.interval == 0 or epoch >= engine.state.max_epochs

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_COMPLETED(event_filter=self.due), self)

    def __call__(self, engine: Any) -> None:
        self.validator.run(engine.state.epoch)


class CheckFinited(MapTransform):
    """Refuse a volume with NaN or infinite voxels: one sentence naming its file and the count."""

    def __call__(self, data: Mapping[Any, Any]) -> dict[Any, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            x = d[key]
            meta = getattr(x, "meta", None) or d.get(f"{key}_meta_dict") or {}
            check_finite_volume(torch.as_tensor(x), meta.get("filename_or_obj", key))
        return d


# -- config checks ----------------------------------------------------------------------------------
def _one_line_errors() -> None:
    """Under ``python -m monai.bundle``: a :class:`UserInputError` is one line and status 2."""
    install_one_line_errors("monai.bundle")


def check_config(positive: Sequence[str] = ()) -> bool:
    """Check a bundle run before anything is built; the first ``initialize`` item of each config.

    One sentence naming the config file and the key for: an override (``--key value``) that names
    no key of the config (a typo such as ``--max_epoch``), a reference ``@key`` to a key the config
    does not define (e.g. one deleted from an edited copy), and a key of ``positive`` that is not a
    whole number of at least 1. Under ``python -m monai.bundle`` such errors print one line and exit
    with status 2 instead of MONAI's traceback. Outside a ``monai.bundle`` ``run`` call it does
    nothing. Returns ``True``.
    """
    from monai.bundle import ConfigParser
    from monai.bundle.config_item import ConfigExpression
    from monai.bundle.reference_resolver import ReferenceResolver

    _one_line_errors()
    call = check_overrides()
    if call is None:
        return True
    files, override = call
    names = ", ".join(Path(f).name for f in files)
    parser = ConfigParser()
    parser.read_config(files)
    parser.update(override)
    for key in positive:
        if key not in parser:
            continue
        value = parser[key]
        if isinstance(value, str) and ConfigExpression.is_expression(value):
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserInputError(
                f"{names}: {key} must be a whole number of at least 1, got {value!r}."
            )
    parser.parse()
    items = parser.ref_resolver.items
    for where, item in items.items():
        config = item.get_config()
        if not isinstance(config, str):
            continue
        for ref in ReferenceResolver.match_refs_pattern(config):
            if ref not in items and not ref.startswith("_meta_"):
                raise UserInputError(
                    f"{names}: '{where}' refers to '@{ref}', which the config does not define"
                    f"{did_you_mean(ref, list(items))}."
                )
    return True
