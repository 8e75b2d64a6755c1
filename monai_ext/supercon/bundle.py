"""Pieces the MONAI bundle ``monai_ext/bundles/supercon_skin`` plugs into MONAI's engines.

Stage 1 needs an ``iteration_update`` for ``SupervisedTrainer`` (two views per image, projection,
SupCon); inference writes class probabilities with a small handler that adds a header row.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys

from monai_ext.supercon.augment import AsymmetricViews
from monai_ext.supercon.config import SuperConConfig
from monai_ext.supercon.data import IMAGE_SUFFIXES, class_balanced_sampler

__all__ = ["Stage1Step", "ProbabilityCSV", "bundle_dir", "make_sampler", "image_items"]


def bundle_dir() -> Path:
    """Folder of the installed bundle (``configs/``, ``docs/``)."""
    return Path(__file__).resolve().parent.parent / "bundles" / "supercon_skin"


def make_sampler(items: Sequence[dict], balanced: bool, seed: int = 0) -> Any:
    """Class-balanced sampler for a datalist, or ``None`` (plain shuffling)."""
    if not balanced:
        return None
    return class_balanced_sampler([int(i["label"]) for i in items], seed=seed)


def image_items(folder: str | Path) -> list[dict]:
    """``[{"image": path}]`` for every image file under ``folder`` (recursive, sorted)."""
    folder = Path(folder)
    if folder.is_file():
        return [{"image": str(folder)}]
    files = sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )
    if not files:
        from plugins.errors import UserInputError

        raise UserInputError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {folder}.")
    return [{"image": str(p)} for p in files]


class Stage1Step:
    """``iteration_update`` for stage 1: plain + strong view of each image ->
    ``network(x, project=True)`` -> (B, 2, 128) -> ``engine.loss_function`` (a
    :class:`plugins.losses.SupConLoss`) -> SGD step.

    The projection goes through ``forward``, so a ``DistributedDataParallel``-wrapped network
    all-reduces its gradients; wrap it with ``find_unused_parameters=True`` (the classifier is
    not used in stage 1). SupCon is computed over each rank's own batch.

    Args:
        image_size: side of both views.
        symmetric: two strong views (original SupCon) instead of SuperCon's asymmetric pair.
    """

    def __init__(self, image_size: int, symmetric: bool = False):
        self.views = AsymmetricViews(image_size, SuperConConfig(), symmetric=symmetric)

    def __call__(self, engine: Any, batch: dict) -> dict:
        device = engine.state.device
        image = (
            batch[Keys.IMAGE].to(device).as_tensor()
            if hasattr(batch[Keys.IMAGE], "as_tensor")
            else batch[Keys.IMAGE].to(device)
        )
        label = torch.as_tensor(batch[Keys.LABEL]).to(device).long().reshape(-1)
        net = engine.network
        net.train()
        engine.optimizer.zero_grad(set_to_none=True)
        v1, v2 = self.views(image)
        z = net(torch.cat([v1, v2]), project=True)  # through forward: DDP-safe
        b = label.shape[0]
        engine.state.output = {Keys.IMAGE: image, Keys.LABEL: label}
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        loss = engine.loss_function(torch.stack([z[:b], z[b:]], 1), label)
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        loss.backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        engine.optimizer.step()
        engine.state.output[Keys.LOSS] = loss.detach()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


class ProbabilityCSV:
    """Evaluator handler writing ``image,<class 0>,<class 1>,...`` rows of class probabilities.

    Args:
        path: output CSV.
        classes: class names for the header.
    """

    def __init__(self, path: str | Path, classes: Sequence[str]):
        self.path = Path(path)
        self.classes = list(classes)
        self.rows: list[list] = []

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, lambda e: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _collect(self, engine: Any) -> None:
        out = engine.state.output
        items = out if isinstance(out, list) else [out]
        for item in items:
            pred = torch.as_tensor(item[Keys.PRED]).detach().float().cpu().reshape(-1)
            meta = getattr(item[Keys.IMAGE], "meta", {})
            name = meta.get("filename_or_obj", f"item{len(self.rows)}")
            self.rows.append([str(name), *(f"{v:.6f}" for v in pred.tolist())])

    def _write(self, engine: Any) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["image", *self.classes])
            w.writerows(self.rows)
