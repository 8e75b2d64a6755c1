"""SimCLR (Chen, Kornblith, Norouzi, Hinton, "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020): the baseline row every other method in this library is compared with.

Two augmented views -> encoder -> 2-layer MLP projector -> NT-Xent (``plugins.losses.nt_xent``, eq. 1).
Evaluation on frozen encoder features: weighted kNN, linear probe and effective rank, each also for the
same encoder at random initialisation.
"""

from __future__ import annotations

from dataclasses import asdict

import torch

from plugins.backbones import small_resnet
from plugins.data import ImageTensorDataset, check_finite, load_train_test
from plugins.engine_settings import batch_for, per_rank_batch
from plugins.evaluation import embed, evaluate_representation
from plugins.methods.simclr.config import SimCLRConfig
from plugins.methods.simclr.model import SimCLR
from plugins.metrics import spectrum
from plugins.options import OptionSet, config_from_options, declared, options_from_dataclass
from plugins.reporting import RunContext

__all__ = ["run", "reproduce", "OPTIONS"]


def run(ctx: RunContext) -> dict[str, float]:
    """``contrastive-plugins run simclr``: train, evaluate against random init, write plots and metrics."""
    ctx = declared(ctx, OPTIONS["run"])
    return _run(ctx)


def fit_simclr(
    ctx: RunContext, dataset: ImageTensorDataset, cfg: SimCLRConfig
) -> tuple[SimCLR, list[float]]:
    """Train :class:`SimCLRTask` on ``dataset`` with the command's engine (``--devices``,
    ``--strategy``, ``--precision``, ``--accumulate``, ``--resume``; :func:`plugins.engine.fit`).
    The global batch is ``cfg.batch_size`` (split over the processes); returns the model on
    ``ctx.device`` and the per-step losses."""
    from plugins.data.stream import TensorImageDataModule
    from plugins.engine import fit
    from plugins.methods.simclr.task import SimCLRTask

    torch.manual_seed(ctx.seed)
    task = SimCLRTask(
        in_channels=dataset.images.shape[1],
        arch=cfg.arch,
        temperature=cfg.temperature,
        projection_dim=cfg.projection_dim,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        crop_scale=tuple(cfg.crop_scale),
        image_size=cfg.image_size,
    )
    batch = per_rank_batch(batch_for(cfg.batch_size, len(dataset)), ctx.engine.devices)
    data = TensorImageDataModule(
        dataset, val_fraction=0, batch_size=batch, seed=ctx.seed, drop_last=True
    )
    losses = fit(ctx, task, data, max_epochs=cfg.epochs, seed=ctx.seed)
    return task.model.to(ctx.device), losses


def _run(ctx: RunContext) -> dict[str, float]:
    size = ctx.option("image_size", 16 if ctx.data in (None, "digits") else None)
    cfg = config_from_options(ctx, SimCLRConfig, image_size=size)
    train_set, test_set, data_name = load_train_test(ctx.data, size=size)
    check_finite(train_set.images, f"images of {data_name}")
    per_rank_batch(min(cfg.batch_size, len(train_set)), ctx.engine.devices)  # before any work
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

    model, losses = fit_simclr(ctx, train_set, cfg)
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
            engine=ctx.engine,
            checkpoint_every=ctx.checkpoint_every,
        )
        m = _run(sub)
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
