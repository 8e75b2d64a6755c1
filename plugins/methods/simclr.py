"""SimCLR (Chen, Kornblith, Norouzi, Hinton, "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020): the baseline row every other method in this library is compared with.

Two augmented views -> encoder -> 2-layer MLP projector -> NT-Xent (``plugins.losses.nt_xent``, eq. 1).
Evaluation on frozen encoder features: weighted kNN, linear probe and effective rank, each also for the
same encoder at random initialisation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from plugins.backbones import TinyResNet, small_resnet
from plugins.checkpoint import Checkpointer, check_resumed_permutation
from plugins.data import (
    ImageTensorDataset,
    TwoViewAugment,
    check_finite,
    load_train_test,
)
from plugins.evaluation import embed, evaluate_representation, resolve_device
from plugins.heads import ProjectionHead
from plugins.losses import nt_xent
from plugins.metrics import spectrum
from plugins.options import OptionSet, config_from_options, declared, options_from_dataclass
from plugins.progress import progress_bar
from plugins.reporting import RunContext

__all__ = [
    "SimCLRConfig",
    "SimCLR",
    "TinyResNet",
    "small_resnet",
    "train_simclr",
    "embed",
    "evaluate_representation",
    "run",
    "reproduce",
    "OPTIONS",
]


@dataclass
class SimCLRConfig:
    """Defaults: the paper's where they fit a CPU, else marked."""

    temperature: float = 0.5  # paper, CIFAR-10 setting (Appendix B.9)
    projection_dim: int = 128  # paper, Sec. 5.2 / Fig. 8
    batch_size: int = 256  # paper uses 256-8192; 256 fits a CPU
    lr: float = 1e-3  # CPU-scale Adam instead of LARS (lr 0.3 x B/256), which needs large batches
    weight_decay: float = 1e-6  # paper (LARS weight decay 1e-6)
    epochs: int = 30
    arch: str = "tiny"  # "tiny" (3-stage ResNet, CPU) or a torchvision ResNet name
    crop_scale: tuple[float, float] = (
        0.2,
        1.0,
    )  # lightly / solo-learn CIFAR default; paper 0.08 on ImageNet
    image_size: int | None = None  # resize inputs to this side (None: keep)


class SimCLR(nn.Module):
    """Encoder + projector. ``forward(x1, x2) -> loss``; ``encoder`` is what downstream tasks use."""

    def __init__(self, encoder: nn.Module, feat_dim: int, config: SimCLRConfig | None = None):
        super().__init__()
        self.config = config or SimCLRConfig()
        self.encoder = encoder
        self.projector = ProjectionHead(feat_dim, feat_dim, self.config.projection_dim)

    def forward(
        self, x1: torch.Tensor, x2: torch.Tensor, gather_distributed: bool = False
    ) -> torch.Tensor:
        z = self.projector(self.encoder(torch.cat([x1, x2])))
        z1, z2 = z.chunk(2)
        return nt_xent(z1, z2, self.config.temperature, gather_distributed=gather_distributed)


def train_simclr(
    dataset: ImageTensorDataset,
    config: SimCLRConfig | None = None,
    device: torch.device | str | None = None,
    seed: int = 0,
    progress: bool = True,
    augment: nn.Module | None = None,
    checkpointer: Checkpointer | None = None,
) -> tuple[SimCLR, list[float]]:
    """Train SimCLR on ``dataset.images`` (labels unused). Returns the model and per-step losses.

    ``checkpointer`` (:class:`plugins.checkpoint.Checkpointer`) saves the training state after
    optimisation steps and resumes from its ``--resume`` file: the resumed run ends with the same
    parameters as an uninterrupted one (CPU, same seed).
    """
    cfg = config or SimCLRConfig()
    device = resolve_device(device)
    torch.manual_seed(seed)
    images = dataset.images
    size = cfg.image_size or images.shape[-1]
    encoder, dim = small_resnet(images.shape[1], cfg.arch)
    model = SimCLR(encoder, dim, cfg).to(device)
    augment = augment or TwoViewAugment(size, scale=cfg.crop_scale)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = len(images)
    bs = min(cfg.batch_size, n)
    steps = max(1, n // bs)
    total = cfg.epochs * steps
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    losses: list[float] = []
    g = torch.Generator().manual_seed(seed)
    # the epoch's permutation, so that a run resumed in the middle of an epoch sees the same batches
    state: dict[str, Any] = {"perm": torch.empty(0, dtype=torch.long)}
    objects = dict(model=model, opt=opt, sched=sched, gen=g, losses=losses, state=state)
    start = checkpointer.restore(total, **objects) if checkpointer else 0
    check_resumed_permutation(state["perm"], n, start, steps, checkpointer)
    model.train()
    bar = progress_bar(total=total, initial=start, desc="simclr", show=progress)
    for step in range(start, total):
        epoch, s = divmod(step, steps)
        if s == 0:
            state["perm"] = torch.randperm(n, generator=g)
        x = images[state["perm"][s * bs : (s + 1) * bs]].to(device, non_blocking=True)
        x1, x2 = augment(x)
        loss = model(x1, x2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        bar.update()
        bar.set_postfix(epoch=f"{epoch + 1}/{cfg.epochs}", loss=f"{losses[-1]:.3f}")
        if checkpointer:
            checkpointer.step(step + 1, **objects)
    bar.close()
    return model, losses


def run(ctx: RunContext) -> dict[str, float]:
    """``contrastive-plugins run simclr``: train, evaluate against random init, write plots and metrics."""
    ctx = declared(ctx, OPTIONS["run"])
    return _run(ctx, ctx.checkpointer())


def _run(ctx: RunContext, checkpointer: Checkpointer | None) -> dict[str, float]:
    size = ctx.option("image_size", 16 if ctx.data in (None, "digits") else None)
    cfg = config_from_options(ctx, SimCLRConfig, image_size=size)
    train_set, test_set, data_name = load_train_test(ctx.data, size=size)
    check_finite(train_set.images, f"images of {data_name}")
    cfg.epochs = ctx.epochs or (8 if ctx.demo else cfg.epochs)
    ctx.run_dir.save_config(
        {
            "method": "simclr",
            "data": data_name,
            "seed": ctx.seed,
            "device": ctx.device,
            **asdict(cfg),
        }
    )

    torch.manual_seed(ctx.seed)
    random_encoder, _ = small_resnet(train_set.images.shape[1], cfg.arch)
    random_scores = evaluate_representation(
        random_encoder.to(ctx.device), train_set, test_set, progress=ctx.progress
    )

    model, losses = train_simclr(
        train_set, cfg, ctx.device, ctx.seed, ctx.progress, checkpointer=checkpointer
    )
    scores = evaluate_representation(model.encoder, train_set, test_set, progress=ctx.progress)
    ctx.run_dir.save_checkpoint(
        {
            "encoder": model.encoder.state_dict(),
            "projector": model.projector.state_dict(),
            "config": asdict(cfg),
        }
    )

    z_test = embed(model.encoder, test_set.images)
    ctx.run_dir.plot_loss(losses)
    ctx.run_dir.plot_spectrum(
        {
            "simclr": spectrum(z_test),
            "random init": spectrum(embed(random_encoder, test_set.images)),
        }
    )
    ctx.run_dir.plot_embedding(z_test, test_set.labels, title=f"SimCLR on {data_name} (test)")
    metrics = {
        **scores,
        **{f"random_{k}": v for k, v in random_scores.items()},
        "final_loss": losses[-1],
    }
    ctx.run_dir.save_metrics(metrics)
    return metrics


def reproduce(ctx: RunContext) -> dict[str, float]:
    """SimCLR vs random init on digits (full budget) and on the CIFAR-10 subset when present."""
    from plugins.data import shared_path
    from plugins.reporting import RunDir

    ctx = declared(ctx, OPTIONS["reproduce"])
    rows, out = [], {}
    datasets = ["digits"] + (["cifar10"] if shared_path("cifar10", required=False) else [])
    ckpt = ctx.checkpointer(stages=tuple(datasets))  # one last.ckpt, in the reproduction's folder
    for name in datasets:
        sub = RunContext(
            "simclr",
            RunDir(path=ctx.run_dir.path / name),
            data=name,
            epochs=ctx.epochs or (30 if name == "digits" else 15),
            device=ctx.device,
            seed=ctx.seed,
            options=ctx.options,
            progress=ctx.progress,
            threads=ctx.threads,
            option_set=ctx.option_set,
        )
        m = _run(sub, ckpt.independent_stage(name))
        ctx.used.update(sub.used)
        rows.append(
            {
                "data": name,
                "knn_acc": m["knn_acc"],
                "random_knn_acc": m["random_knn_acc"],
                "linear_acc": m["linear_acc"],
                "random_linear_acc": m["random_linear_acc"],
                "effective_rank": m["effective_rank"],
            }
        )
        out.update({f"{name}_{k}": v for k, v in m.items()})
    ctx.run_dir.save_table(rows)
    ctx.run_dir.save_metrics(out)
    return out


_SIMCLR_OPTIONS = options_from_dataclass(
    SimCLRConfig,
    exclude=("epochs",),  # --epochs
    help={
        "temperature": "NT-Xent temperature (paper 0.5, CIFAR-10)",
        "projection_dim": "projector output size",
        "batch_size": "images per step",
        "lr": "Adam learning rate",
        "weight_decay": "Adam weight decay",
        "arch": "encoder: tiny (CPU ResNet) or a torchvision ResNet name",
        "crop_scale": "random-resized-crop area range, two numbers",
        "image_size": "resize images to this side",
    },
    default_docs={"image_size": "16 on digits, else the data's size"},
    ranges={
        "temperature": (1e-4, None),
        "projection_dim": (1, None),
        "batch_size": (2, None),
        "lr": (0, None),
        "weight_decay": (0, None),
        "crop_scale": (0, 1),
        "image_size": (8, None),
    },
)
OPTIONS = {"run": OptionSet(_SIMCLR_OPTIONS), "reproduce": OptionSet(_SIMCLR_OPTIONS)}
