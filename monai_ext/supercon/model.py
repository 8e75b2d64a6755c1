"""SuperCon network: encoder -> projection head (stage 1) and encoder -> linear classifier (stage 2).

Chen, Zhuang, Chang, SuperCon (2022), Sec. 3.1: ``z = normalize(W2 relu(W1 f(x)))`` with
``W1: d x d`` and ``W2: 128 x d``; the classifier of stage 2 is one linear layer on ``f(x)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from plugins.errors import UserInputError
from plugins.heads import ProjectionHead

__all__ = ["build_encoder", "known_arch", "SuperConNet"]

ARCH_HELP = "resnet50, another torchvision resnet (resnet18, ...), small-resnet18, tiny or micro"


def known_arch(arch: str) -> bool:
    """Whether :func:`build_encoder` knows ``arch``."""
    if arch in ("micro", "tiny"):
        return True
    name = arch.removeprefix("small-")
    return name.startswith("resnet") and hasattr(torchvision.models, name)


def build_encoder(arch: str = "resnet50", in_channels: int = 3) -> tuple[nn.Module, int]:
    """Encoder without classifier and its feature dimension ``d``.

    ``resnet50`` (the paper's encoder) and other torchvision ResNets keep the ImageNet stem for
    full-size dermoscopy images; ``small-resnet18`` / ``tiny`` / ``micro`` (half-width tiny) use the small-image stem of
    :func:`plugins.backbones.small_resnet` for CPU runs on 32-64 px images. Weights are always
    random (``weights=None``); load your own with ``load_state_dict``.
    """
    if arch == "micro":  # TinyResNet at half width: the embedded demo and CPU reproduction
        from plugins.backbones import TinyResNet

        net = TinyResNet(in_channels, widths=(16, 32, 64))
        return net, net.out_dim
    if arch == "tiny" or arch.startswith("small-"):
        from plugins.backbones import small_resnet

        return small_resnet(in_channels, arch.removeprefix("small-"))
    if not known_arch(arch):
        raise UserInputError(f"unknown encoder arch '{arch}'; use {ARCH_HELP}.")
    net = getattr(torchvision.models, arch)(weights=None)
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, dim


class SuperConNet(nn.Module):
    """Encoder + projection head + linear classifier.

    ``forward(x)`` (B, C, H, W) -> class logits (B, K): what stage 2, inference and MONAI's
    ``verify_net_in_out`` use. ``forward(x, project=True)`` (or ``project(x)``) -> L2-normalised
    (B, 128) embeddings for stage 1; engines call the keyword form, so that a
    ``DistributedDataParallel`` wrapper (which only forwards ``forward``) still syncs gradients.

    Args:
        num_classes: K.
        arch: encoder name (see :func:`build_encoder`).
        in_channels: image channels.
        proj_dim: projection output size (128 in the paper).
    """

    def __init__(
        self, num_classes: int, arch: str = "resnet50", in_channels: int = 3, proj_dim: int = 128
    ):
        super().__init__()
        self.encoder, self.feat_dim = build_encoder(arch, in_channels)
        self.head = ProjectionHead(self.feat_dim, self.feat_dim, proj_dim, num_layers=2)
        self.classifier = nn.Linear(self.feat_dim, num_classes)
        self.frozen_encoder = False

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, d) encoder features."""
        return self.encoder(x)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, proj_dim), unit norm."""
        return F.normalize(self.head(self.encoder(x)), dim=1)

    def forward(self, x: torch.Tensor, project: bool = False) -> torch.Tensor:
        if project:
            return self.project(x)
        if self.frozen_encoder:
            with torch.no_grad():
                f = self.encoder(x)
            return self.classifier(f)
        return self.classifier(self.encoder(x))

    def freeze_encoder(self, encoder_mode: str = "eval") -> list[nn.Parameter]:
        """Stage 2 setup: encoder and head get no gradient; returns the classifier's parameters.

        With ``encoder_mode="eval"`` (default, the paper's intent) the encoder stays in eval mode even
        when the whole network is put in train mode (as MONAI's trainer does every iteration), so
        BatchNorm statistics are left untouched. ``"train"`` reproduces the reference code.
        """
        if encoder_mode not in ("eval", "train"):
            raise UserInputError(f"encoder_mode must be 'eval' or 'train', got {encoder_mode!r}.")
        self.frozen_encoder = True
        self._encoder_mode = encoder_mode
        for p in list(self.encoder.parameters()) + list(self.head.parameters()):
            p.requires_grad_(False)
        self.train(self.training)
        return list(self.classifier.parameters())

    def train(self, mode: bool = True) -> SuperConNet:
        super().train(mode)
        if self.frozen_encoder and getattr(self, "_encoder_mode", "eval") == "eval":
            self.encoder.eval()
            self.head.eval()
        return self
