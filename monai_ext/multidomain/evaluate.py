"""Scores of the bundle's ``evaluate`` config: per case, domain and structure Dice, HD95, ASSD.

Predictions are scored in each input's own voxel grid (after ``Invertd``) against the label file as
it is on disk (its raw values mapped by the domain's ``label_values``), with the label's own
spacing, using ``monai.metrics`` (Boutillon et al., MICCAI 2021, Sec. 3 report Dice, HD95 and ASSD).
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from monai_ext.multidomain.data import load_volume
from plugins.errors import UserInputError

if TYPE_CHECKING:  # the scores alone (train.surface_scores) need no MONAI transforms
    from monai_ext.multidomain.domains import DomainRow

__all__ = ["case_scores", "overlay_slices", "EvaluationWriter", "METRICS"]

METRICS = ("dice", "hd95", "assd")


def case_scores(
    pred: torch.Tensor, truth: torch.Tensor, num_classes: int, spacing: Sequence[float]
) -> dict[str, np.ndarray]:
    """Dice, HD95 (mm) and symmetric ASSD (mm) of each foreground class of one volume.

    Args:
        pred, truth: (*S) integer label maps of the same shape (2-D or 3-D).
        spacing: voxel size (mm) per spatial axis.

    Returns:
        ``{"dice", "hd95", "assd"}``, each (num_classes - 1,); NaN where the class is absent from the
        truth (Dice) or from either map (distances).
    """
    from monai.metrics import DiceMetric, HausdorffDistanceMetric, SurfaceDistanceMetric

    eye = torch.eye(num_classes)
    dims = list(range(pred.ndim))
    p = eye[pred.long().cpu()].permute(pred.ndim, *dims)[None]  # (1, C, *S)
    t = eye[truth.long().cpu()].permute(truth.ndim, *dims)[None]
    dice = DiceMetric(include_background=False, reduction="none", ignore_empty=True)
    hd = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")
    asd = SurfaceDistanceMetric(include_background=False, symmetric=True, reduction="none")
    out = {"dice": dice(p, t)[0].numpy().astype(float)}
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", UserWarning)  # MONAI warns for empty maps; they are NaN
        out["hd95"] = hd(p, t, spacing=list(spacing))[0].numpy().astype(float)
        out["assd"] = asd(p, t, spacing=list(spacing))[0].numpy().astype(float)
    for v in out.values():
        v[~np.isfinite(v)] = np.nan
    return out


def overlay_slices(
    image: np.ndarray, truth: np.ndarray, pred: np.ndarray, affine: np.ndarray, slice_axis: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The 2-D planes an overlay shows: the volumes (X, Y, Z, one grid with ``affine``) reoriented
    to RAS, cut across the domain's ``slice_axis`` (the plane the network saw) at the slice with
    the most labelled voxels."""
    from monai_ext.multidomain.data import slice_axis_last, to_ras

    order = slice_axis_last(slice_axis)
    image, truth, pred = (np.transpose(to_ras(v, affine)[0], order) for v in (image, truth, pred))
    z = int(np.argmax((truth > 0).reshape(-1, truth.shape[2]).sum(0)))
    return image[:, :, z], truth[:, :, z], pred[:, :, z]


class EvaluationWriter:
    """Ignite handler of the ``evaluate`` config: score each case, write CSVs and overlays.

    Writes ``<output_dir>/metrics.csv`` (case, domain, structure, dice, hd95, assd, missed),
    ``<output_dir>/summary.csv`` (domain, structure, n, mean and std of each metric over the cases
    where it is defined, and ``missed``: the cases where the structure is in the truth but was not
    predicted, whose HD95 and ASSD are empty and so left out of those means) and
    ``<output_dir>/overlays/<case>.png`` (the slice with the most labelled voxels: truth contours
    green, prediction red).

    Args:
        output_dir: folder of the files.
        domains: the checkpoint's domain table.
        overlays: write the PNGs.
    """

    def __init__(self, output_dir: str | Path, domains: Sequence[DomainRow], overlays: bool = True):
        self.output_dir = Path(output_dir)
        self.domains = list(domains)
        self.overlays = overlays
        self.rows: list[dict[str, Any]] = []

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, lambda _: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def collect(self, engine: Any) -> None:
        outputs, batch = engine.state.output, engine.state.batch
        for out, item in zip(outputs, batch, strict=True):
            self.score(out["pred"], item)

    def score(self, pred: torch.Tensor, item: dict) -> None:
        """Score one prediction (1, *S) in its input's grid against ``item['label']``."""
        spec = self.domains[int(torch.as_tensor(item["domain"]))]
        image_path = Path(str(item["image"].meta["filename_or_obj"]))
        truth, affine = load_volume(item["label"])
        lut = spec.value_map()
        if lut:
            truth = np.vectorize(lambda v: lut.get(int(v), v), otypes=[np.float32])(truth)
        pred = torch.as_tensor(pred)[0].round().long().cpu()
        if tuple(pred.shape) != truth.shape:
            raise UserInputError(
                f"{item['label']} has shape {truth.shape} but the prediction of {image_path} has "
                f"{tuple(pred.shape)}: label and image must share one grid."
            )
        spacing = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0))
        scores = case_scores(pred, torch.from_numpy(truth).long(), spec.num_classes, spacing)
        case = image_path.name.removesuffix(".gz").removesuffix(".nii")
        for c, structure in enumerate(spec.labels[1:]):
            missed = bool((truth == c + 1).any()) and not bool((pred == c + 1).any())
            self.rows.append(
                {"case": case, "domain": spec.name, "structure": structure}
                | {m: float(scores[m][c]) for m in METRICS}
                | {"missed": int(missed)}
            )
        if self.overlays:
            image, _ = load_volume(image_path)
            planes = overlay_slices(image, truth, pred.numpy(), affine, spec.slice_axis)
            self._overlay(*planes, case, spec)

    def _overlay(
        self, image: np.ndarray, truth: np.ndarray, pred: np.ndarray, case: str, spec: DomainRow
    ) -> None:
        from plugins.reporting import pyplot

        plt = pyplot()
        fig, ax = plt.subplots(figsize=(4, 4))
        ax.imshow(image, cmap="gray")
        for c in range(1, spec.num_classes):
            for mask, colour in ((truth, "lime"), (pred, "red")):
                if (mask == c).any():
                    ax.contour(mask == c, levels=[0.5], colors=colour, linewidths=0.8)
        ax.set_title(f"{case} ({spec.name}) truth green, prediction red", fontsize=7)
        ax.axis("off")
        folder = self.output_dir / "overlays"
        folder.mkdir(parents=True, exist_ok=True)
        fig.savefig(folder / f"{case}.png", dpi=100, bbox_inches="tight")
        plt.close(fig)

    def write(self, engine: Any = None) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        fields = ["case", "domain", "structure", *METRICS, "missed"]
        with open(self.output_dir / "metrics.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fields)
            w.writeheader()
            w.writerows(self.rows)
        summary = []
        for spec in self.domains:
            for structure in spec.labels[1:]:
                rows = [
                    r for r in self.rows if (r["domain"], r["structure"]) == (spec.name, structure)
                ]
                if not rows:
                    continue
                line: dict[str, Any] = {"domain": spec.name, "structure": structure, "n": len(rows)}
                line["missed"] = sum(r["missed"] for r in rows)
                for m in METRICS:
                    v = np.asarray([r[m] for r in rows], dtype=float)
                    ok = v[np.isfinite(v)]
                    line[f"{m}_mean"] = float(ok.mean()) if ok.size else float("nan")
                    line[f"{m}_std"] = float(ok.std()) if ok.size else float("nan")
                summary.append(line)
        with open(self.output_dir / "summary.csv", "w", newline="") as f:
            keys = ["domain", "structure", "n", "missed"] + [
                f"{m}_{s}" for m in METRICS for s in ("mean", "std")
            ]
            w = csv.DictWriter(f, keys)
            w.writeheader()
            w.writerows(summary)
