"""The condensed data set: a few learned images per class, stored normalised, plus what is needed to
train on it (channel mean/std of the real data it was condensed from)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from plugins.data import ImageTensorDataset
from plugins.errors import UserInputError

__all__ = ["SyntheticSet", "channel_stats", "group_by_class"]


def channel_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (C,) of (N, C, H, W) images (std floored at 1e-3)."""
    mean = images.mean(dim=(0, 2, 3))
    std = images.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return mean, std


def group_by_class(
    images: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> list[torch.Tensor]:
    """List of (n_c, C, H, W) images per class; raises when a class has no image."""
    groups = [images[labels == c] for c in range(num_classes)]
    empty = [c for c, g in enumerate(groups) if len(g) == 0]
    if empty:
        raise UserInputError(
            f"classes {empty} have no training image; every class needs at least one."
        )
    return groups


@dataclass
class SyntheticSet:
    """``ipc`` learned images per class.

    Attributes:
        images: (K * ipc, C, H, W) in normalised space (``(pixel - mean) / std``), class-major order.
        labels: (K * ipc,) class of each image.
        mean, std: (C,) channel statistics of the real training data.
        classes: class names.
        method: ``"dcc"``, ``"dc"`` or ``"random"``.
        losses: mean matching loss per outer iteration.
        contrastive_steps: how many image updates used the DCC (contrastive) objective.
    """

    images: torch.Tensor
    labels: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    classes: list[str]
    method: str = "dcc"
    losses: list[float] = field(default_factory=list)
    contrastive_steps: int = 0

    @property
    def ipc(self) -> int:
        return len(self.labels) // max(len(self.classes), 1)

    def pixels(self) -> torch.Tensor:
        """(N, C, H, W) images back in pixel space, clipped to [0, 1] (for viewing)."""
        m, s = self.mean.view(1, -1, 1, 1), self.std.view(1, -1, 1, 1)
        return (self.images.detach().cpu() * s + m).clamp(0, 1)

    def as_dataset(self) -> ImageTensorDataset:
        """The synthetic set in pixel space (unclipped) as a dataset any trainer here accepts."""
        m, s = self.mean.view(1, -1, 1, 1), self.std.view(1, -1, 1, 1)
        return ImageTensorDataset(
            self.images.detach().cpu() * s + m, self.labels.cpu(), self.classes
        )

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """Real images (N, C, H, W) in [0, 1] -> the space the synthetic images live in."""
        m = self.mean.to(pixels.device).view(1, -1, 1, 1)
        s = self.std.to(pixels.device).view(1, -1, 1, 1)
        return (pixels - m) / s

    def save(self, path: str | Path) -> None:
        """Write the set (and its clipped pixels, for viewing) atomically to ``path``."""
        from plugins.reporting import atomic_write_bytes

        state = {
            "images": self.images.detach().cpu(),
            "labels": self.labels.cpu(),
            "mean": self.mean.cpu(),
            "std": self.std.cpu(),
            "classes": list(self.classes),
            "method": self.method,
            "pixels": self.pixels(),
        }
        atomic_write_bytes(Path(path), lambda tmp: torch.save(state, tmp))

    @classmethod
    def load(cls, path: str | Path) -> SyntheticSet:
        """Read a set written by :meth:`save` (safely: tensors and plain containers only)."""
        from plugins.checkpoint import load_checkpoint

        d = load_checkpoint(path, what="synthetic set file")
        missing = [k for k in ("images", "labels", "mean", "std", "classes") if k not in d]
        if missing:
            raise UserInputError(
                f"synthetic set file {path} lacks {', '.join(missing)}; expected a file written by "
                "SyntheticSet.save (synthetic.pt of a dcc run)."
            )
        return cls(
            d["images"],
            d["labels"],
            d["mean"],
            d["std"],
            list(d["classes"]),
            d.get("method", "dcc"),
        )
