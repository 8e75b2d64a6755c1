"""``contrastive-plugins run|reproduce directclr``.

``run``: trains one mode (``--set mode=directclr|baseline|simclr|linear``) on the embedded digits, the
shared CIFAR-10 subset (``--data cifar10``) or a user folder, with collapse monitoring.
``reproduce``: the paper's two linear toy simulations, then the four modes at one budget.
"""

from __future__ import annotations

import time
from dataclasses import asdict

import torch
import torch.nn.functional as F

from plugins.backbones import TinyResNet
from plugins.data import ImageTensorDataset, check_finite, load_train_test
from plugins.engine_settings import batch_for, per_rank_batch
from plugins.errors import UserInputError
from plugins.evaluation import embed, evaluate_representation
from plugins.methods.directclr.model import (
    MODES,
    DirectCLRConfig,
    default_d0,
    zero_init_residual,
)
from plugins.methods.directclr.toy import (
    alignment_diagonality,
    alignment_matrix,
    implicit_regularization_toy,
    strong_augmentation_toy,
)
from plugins.methods.directclr.train import TrainResult
from plugins.metrics import spectrum
from plugins.options import Option, OptionSet, config_from_options, declared, options_from_dataclass
from plugins.progress import phase
from plugins.reporting import RunContext, RunDir

__all__ = ["run", "reproduce", "run_mode", "run_toys", "PAPER_CONTEXT", "OPTIONS"]

#: Quoted for context (not measured here).
PAPER_CONTEXT = [
    {"source": "Jing et al. 2022, released code README", "setting": "ImageNet, ResNet-50, 100 epochs, d0=360",
     "mode": "directclr", "linear_top1": "62.7%"},
    {"source": "Jing et al. 2022, Table 1 / Sec. 6", "setting": "same budget",
     "mode": "ordering", "linear_top1": "simclr (2-layer) > directclr > linear projector > baseline (no projector)"},
]  # fmt: skip


def _resize(ds: ImageTensorDataset, size: int | None) -> ImageTensorDataset:
    if size is None or ds.images.shape[-1] == size:
        return ds
    x = F.interpolate(
        ds.images, size=(size, size), mode="bilinear", antialias=True, align_corners=False
    ).clamp(0, 1)
    return ImageTensorDataset(x, ds.labels, ds.classes)


def _balanced_head(ds: ImageTensorDataset, n: int | None) -> ImageTensorDataset:
    """First ``n`` images in a class-balanced order (every class equally often), deterministic."""
    if n is None or n >= len(ds):
        return ds
    onehot = F.one_hot(ds.labels, ds.num_classes)
    rank_in_class = (onehot.cumsum(0) * onehot).sum(1) - 1
    order = torch.argsort(rank_in_class * ds.num_classes + ds.labels, stable=True)
    return ds.subset(order[:n])


def _prepare(ctx: RunContext, other_size: int | None):
    """Train/test sets resized to ``--set image_size`` (default 16 on digits, else ``other_size``)."""
    size = ctx.option("image_size", 16 if ctx.data in (None, "digits") else other_size)
    train_set, test_set, name = load_train_test(ctx.data)
    train_set, test_set = _resize(train_set, size), _resize(test_set, size)
    check_finite(train_set.images, f"images of {name}")
    check_finite(test_set.images, f"test images of {name}")
    return train_set, test_set, name, size


def _widths_and_d0(ctx: RunContext) -> tuple[tuple[int, ...], int | None]:
    widths = tuple(ctx.option("widths"))
    if not widths:
        raise UserInputError("--set widths needs at least one channel count, got none.")
    d0 = ctx.option("d0")
    if d0 is not None and d0 > widths[-1]:
        raise UserInputError(
            f"--set d0={d0}: expected at most the representation width {widths[-1]} (the last of widths)."
        )
    return widths, d0


def run_mode(mode: str, train_set: ImageTensorDataset, test_set: ImageTensorDataset, cfg: DirectCLRConfig, ctx: RunContext,
             run_dir: RunDir, widths: tuple[int, ...], d0: int | None, eval_train: int | None, eval_test: int | None,
             probe_size: int = 512) -> dict:  # fmt: skip
    """Train one mode with collapse monitoring, evaluate r, write plots into ``run_dir``."""
    probe = _balanced_head(test_set, probe_size).images
    t0 = time.perf_counter()
    res = fit_directclr(ctx, run_dir, train_set, cfg, mode, widths, d0, probe,
                        ctx.option("monitor_every"))  # fmt: skip
    model = res.model
    train_s = time.perf_counter() - t0
    ev_tr, ev_te = _balanced_head(train_set, eval_train), _balanced_head(test_set, eval_test)
    scores = evaluate_representation(model.backbone, ev_tr, ev_te, ctx.device, ctx.progress)
    z_test = embed(model.backbone, ev_te.images, device=ctx.device)
    for tracker in res.trackers.values():
        tracker.plot(run_dir)
        tracker.save(run_dir)
    run_dir.plot_loss(res.losses, name=f"loss_{mode}.png")
    run_dir.save_checkpoint({"model": model.state_dict(), "mode": mode, "d0": model.d0, "config": asdict(cfg)},
                            name=f"checkpoint_{mode}.pt")  # fmt: skip
    last = res.trackers["representation"].history[-1]
    row = {
        "mode": mode, "d0": model.d0 if mode == "directclr" else None, **scores,
        "nonzero_eigenvalues": last["nonzero_eigenvalues"], "dim": model.feat_dim,
        "final_loss": res.losses[-1], "steps": len(res.losses), "train_s": train_s,
        "_spectrum": spectrum(z_test), "_z": z_test, "_labels": ev_te.labels,
    }  # fmt: skip
    if res.classifier_acc:
        row["online_classifier_acc"] = sum(res.classifier_acc[-20:]) / len(res.classifier_acc[-20:])
    return row


def fit_directclr(ctx: RunContext, run_dir: RunDir, train_set: ImageTensorDataset, cfg: DirectCLRConfig, mode: str,
                  widths: tuple[int, ...], d0: int | None, probe: torch.Tensor | None, monitor_every: int) -> TrainResult:  # fmt: skip
    """Train :class:`DirectCLRTask` (a :class:`TinyResNet` of ``widths``) on ``train_set`` with the
    command's engine (:func:`plugins.engine.fit`), collapse monitors on ``probe`` for r and z.

    Every mode starts from the same weights (seeded). ``cfg.batch_size`` is the global batch.
    ``last.ckpt`` goes into ``run_dir``; ``--resume`` applies when it is the run's own folder."""
    from plugins.data.stream import TensorImageDataModule
    from plugins.engine import LossRecorder, fit
    from plugins.methods.directclr.task import DirectCLRTask
    from plugins.monitoring import CollapseMonitor

    batch = batch_for(cfg.batch_size, len(train_set))
    per_rank = per_rank_batch(batch, ctx.engine.devices)
    fields = {f: getattr(cfg, f) for f in DirectCLRTask.config_fields()}
    torch.manual_seed(ctx.seed)  # every mode starts from the same backbone weights
    task = DirectCLRTask(
        in_channels=train_set.images.shape[1], mode=mode, d0=d0, widths=widths,
        num_classes=train_set.num_classes if cfg.online_classifier else None,
        **{**fields, "batch_size": batch},
    )  # fmt: skip
    monitors = [
        CollapseMonitor(monitor_every, on, probe_batch=probe, log=False, plot=False)
        for on in ("representation", "embedding")
    ]
    data = TensorImageDataModule(
        train_set, val_fraction=0, batch_size=per_rank, seed=ctx.seed, drop_last=True
    )
    recorder = LossRecorder("contrastive_loss", extra=("classifier_acc",))
    own = run_dir.path == ctx.run_dir.path
    fit(ctx, task, data, max_epochs=cfg.epochs, seed=ctx.seed, callbacks=monitors,
        recorder=recorder, run_dir=None if own else run_dir)  # fmt: skip
    trackers = {m.on: m.tracker for m in monitors}
    model = task.model.to(ctx.device)
    return TrainResult(model, recorder.losses, trackers, recorder.extra["classifier_acc"])


def _config(ctx: RunContext, epochs: int) -> DirectCLRConfig:
    """The paper's config with every ``--set`` field (declared in :data:`OPTIONS`) and ``epochs``."""
    return config_from_options(ctx, DirectCLRConfig, exclude=("epochs",), epochs=epochs)


def run(ctx: RunContext) -> dict[str, float]:
    """Train one mode; writes config, metrics, checkpoint, loss, spectra, collapse curves, embedding map."""
    ctx = declared(ctx, OPTIONS["run"])
    mode = ctx.option("mode")
    with ctx.cpu_threads(1 if ctx.device.type == "cpu" else None):
        widths, d0 = _widths_and_d0(ctx)
        train_set, test_set, name, size = _prepare(ctx, 32)
        epochs = ctx.epochs or (6 if ctx.demo else 100)
        cfg = _config(ctx, epochs)
        ctx.run_dir.save_config({"method": "directclr", "mode": mode, "data": name, "image_size": size, "widths": widths,
                                 "d0": d0 if d0 is not None else default_d0(widths[-1], cfg.d0_fraction), "seed": ctx.seed,
                                 "device": ctx.device, **asdict(cfg)})  # fmt: skip
        eval_n = 2000 if ctx.demo else None
        per_rank_batch(min(cfg.batch_size, len(train_set)), ctx.engine.devices)  # before any work
        row = run_mode(mode, train_set, test_set, cfg, ctx, ctx.run_dir, widths, d0, eval_n, eval_n)
        ctx.run_dir.plot_spectrum({mode: row["_spectrum"]}, name="spectrum.png")
        m = ctx.option("map_points")  # t-SNE cost; the map only needs a sample
        ctx.run_dir.plot_embedding(
            row["_z"][:m], row["_labels"][:m], title=f"DirectCLR[{mode}] on {name} (test)"
        )
    metrics = {
        k: float(v) for k, v in row.items() if not k.startswith("_") and isinstance(v, int | float)
    }
    ctx.run_dir.save_metrics(metrics)
    return metrics


def run_toys(run_dir: RunDir, seed: int = 0) -> tuple[list[dict], dict[str, float]]:
    """The paper's linear simulations with controls; spectrum plots and the alignment matrices."""
    toys = {
        "toy1_strong_aug_1layer": strong_augmentation_toy(2.0, seed=seed),
        "toy1_weak_aug_1layer": strong_augmentation_toy(0.1, seed=seed),
        "toy2_weak_aug_2layer": implicit_regularization_toy(2, seed=seed),
        "toy2_weak_aug_1layer": implicit_regularization_toy(1, seed=seed, init_scale=1.0),
    }
    rows, out = [], {}
    for name, r in toys.items():
        sub = run_dir.path / name
        r.tracker.plot(sub)
        ev = r.eigenvalues
        row = {"experiment": name, "loss": r.config.loss, "collapsed_<1e-3": r.collapsed(1e-3), "collapsed_<1e-7": r.collapsed(1e-7),
               "min_log10_eig_rel": float((ev[-1].clamp_min(1e-300) / ev[0]).log10())}  # fmt: skip
        if r.config.layers == 1 and name.startswith("toy1"):
            w = r.weights[0]
            row["noisy_to_clean_weight_ratio"] = float(w[:, 8:].norm() / w[:, :8].norm())
        if r.config.layers == 2:
            init = implicit_regularization_toy(2, seed=seed, steps=0)
            row["alignment_diag_init"] = alignment_diagonality(*init.weights)
            row["alignment_diag_final"] = alignment_diagonality(*r.weights)
            _plot_alignment(run_dir, init.weights, r.weights)
        rows.append(row)
        out.update({f"{name}_{k}": float(v) for k, v in row.items() if isinstance(v, int | float)})
    run_dir.plot_spectrum({n: r.eigenvalues for n, r in toys.items()}, name="toy_spectra.png")
    return rows, out


def _plot_alignment(
    run_dir: RunDir, w_init: list[torch.Tensor], w_final: list[torch.Tensor]
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(7, 3.4))
    for ax, ws, title in zip(axes, (w_init, w_final), ("at initialisation", "after training")):
        a, _, _ = alignment_matrix(*ws)
        im = ax.imshow(a.abs().numpy(), vmin=0, vmax=1, cmap="viridis")
        ax.set_title(f"|A| = |V2^T U1| {title}", fontsize=9)
    fig.colorbar(im, ax=axes, fraction=0.03)
    run_dir.save_figure(fig, "toy2_alignment_matrix.png")


def reproduce(ctx: RunContext) -> dict[str, float]:
    """Toy simulations (seconds), then directclr / baseline / simclr / linear at one budget.

    CPU budget for ``--data cifar10`` (about 10 minutes on 2 shared cores): 16x16 images, TinyResNet
    widths (16, 32, 64) so D = 64 and d0 = 11, batch 128, 4 epochs of the 10k subset per mode, kNN and
    linear probe on 5,000 / 5,000 class-balanced images. ``--set`` overrides ``image_size``, ``widths``,
    ``eval_train``, ``eval_test``, ``modes``, ``batch_size``, ``optimizer`` and the other config
    fields (``OPTIONS["reproduce"]``). The modes train separate models, so ``--resume`` retrains the
    modes before the checkpoint's one and continues that one.
    """
    ctx = declared(ctx, OPTIONS["reproduce"])
    out: dict[str, float] = {}
    with ctx.cpu_threads(1 if ctx.device.type == "cpu" else None):
        with phase("linear toy simulations", show=ctx.progress):
            toy_rows, toy_out = run_toys(ctx.run_dir, ctx.seed)
        ctx.run_dir.save_table(toy_rows, "toy_table.md")
        out.update(toy_out)
        if ctx.option("toys_only"):
            ctx.run_dir.save_metrics(out)
            return out
        is_small = ctx.data in (None, "digits")
        widths, d0 = _widths_and_d0(ctx)
        modes = ctx.option("modes")
        if not modes:
            raise UserInputError(f"--set modes needs at least one of {', '.join(MODES)}, got none.")
        train_set, test_set, name, size = _prepare(ctx, 16)
        epochs = ctx.epochs or (30 if is_small else 4)
        cfg = _config(ctx, epochs)
        eval_train = ctx.option("eval_train", None if is_small else 5000)
        eval_test = ctx.option("eval_test", None if is_small else 5000)
        ctx.run_dir.save_config({"method": "directclr", "reproduce": True, "data": name, "image_size": size, "widths": widths,
                                 "modes": modes, "eval_train": eval_train, "eval_test": eval_test, "seed": ctx.seed,
                                 **asdict(cfg)})  # fmt: skip
        rows, spectra = [], {}
        torch.manual_seed(ctx.seed)  # the weights every mode starts from, evaluated untrained
        untrained = zero_init_residual(TinyResNet(train_set.images.shape[1], widths=widths))
        ev_tr, ev_te = _balanced_head(train_set, eval_train), _balanced_head(test_set, eval_test)
        rows.append(
            {
                "mode": "random init (untrained)",
                **evaluate_representation(untrained, ev_tr, ev_te, ctx.device, ctx.progress),
            }
        )
        spectra["random init"] = spectrum(embed(untrained, ev_te.images, device=ctx.device))
        for mode in modes:
            sub = RunDir(path=ctx.run_dir.path / mode)
            row = run_mode(
                mode, train_set, test_set, cfg, ctx, sub, widths, d0, eval_train, eval_test
            )
            spectra[mode] = row["_spectrum"]
            rows.append({k: v for k, v in row.items() if not k.startswith("_")})
            out.update(
                {
                    f"{name}_{mode}_{k}": float(v)
                    for k, v in rows[-1].items()
                    if isinstance(v, int | float)
                }
            )
    ctx.run_dir.plot_spectrum(spectra, name="spectrum_representation_by_mode.png")
    table = [{"data": name, **r} for r in rows]
    ctx.run_dir.save_table(table, "table.md")
    ctx.run_dir.save_table(PAPER_CONTEXT, "paper_context.md")
    ctx.run_dir.save_metrics(out)
    return out


_CONFIG_OPTIONS = options_from_dataclass(
    DirectCLRConfig,
    exclude=("epochs",),  # --epochs
    defaults={"batch_size": 128},  # CPU scale (config: 256, paper: 4096)
    help={
        "d0_fraction": "share of the representation the loss sees (paper 360/2048)",
        "temperature": "InfoNCE temperature (paper 0.1)",
        "negatives": "cross_view (paper's code) or all (lightly's NT-Xent form)",
        "projection_dim": "simclr mode: projector output size",
        "optimizer": "lars (paper) or adam",
        "base_lr": "LARS lr at base_batch_size, scaled linearly with the batch",
        "base_batch_size": "the batch size base_lr refers to",
        "adam_lr": "learning rate with optimizer=adam",
        "weight_decay": "weight decay",
        "lars_eta": "LARS trust coefficient",
        "warmup_fraction": "share of the steps with linear warm-up",
        "batch_size": "images per step",
        "blur_p": "blur probability of view 1 and view 2",
        "solarize_p": "solarisation probability of view 1 and view 2",
        "crop_scale": "random-resized-crop area range, two numbers",
        "online_classifier": "train a linear classifier on detached r (logged only)",
    },
    ranges={
        "d0_fraction": (1e-6, 1),
        "temperature": (1e-4, None),
        "projection_dim": (1, None),
        "base_lr": (0, None),
        "base_batch_size": (1, None),
        "adam_lr": (0, None),
        "weight_decay": (0, None),
        "lars_eta": (0, None),
        "warmup_fraction": (0, 1),
        "batch_size": (2, None),
        "blur_p": (0, 1),
        "solarize_p": (0, 1),
        "crop_scale": (0, 1),
    },
    choices={"negatives": ("cross_view", "all"), "optimizer": ("lars", "adam")},
)


def _d0() -> Option:
    return Option("d0", "int", None, "leading dims the loss sees (directclr mode)", nullable=True,
                  low=1, default_doc="round(D * d0_fraction), D = the last width")  # fmt: skip


def _monitor_every() -> Option:
    return Option("monitor_every", "int", 50, "steps between collapse-spectrum checks", low=1)


OPTIONS = {
    "run": OptionSet(
        Option("mode", "str", "directclr", "what the loss sees (paper Table 1)", choices=MODES),
        Option(
            "image_size",
            "int",
            None,
            "resize images to this side",
            nullable=True,
            low=8,
            default_doc="16 on digits, else 32",
        ),
        Option(
            "widths",
            "int",
            [32, 64, 128],
            "TinyResNet channels per stage; D = the last",
            demo_default=[16, 32, 64],
            many=True,
            low=1,
        ),
        _d0(),
        _monitor_every(),
        Option("map_points", "int", 500, "test points in the t-SNE embedding map", low=2),
        _CONFIG_OPTIONS,
    ),
    "reproduce": OptionSet(
        Option("toys_only", "bool", False, "run only the paper's linear toy simulations"),
        Option("modes", "str", list(MODES), "modes to train and compare", many=True, choices=MODES),
        Option("image_size", "int", 16, "resize images to this side", low=8),
        Option(
            "widths",
            "int",
            [16, 32, 64],
            "TinyResNet channels per stage; D = the last",
            many=True,
            low=1,
        ),
        _d0(),
        _monitor_every(),
        Option(
            "eval_train",
            "int",
            None,
            "class-balanced training images for kNN / probe",
            nullable=True,
            low=1,
            default_doc="all on digits, else 5000",
        ),
        Option(
            "eval_test",
            "int",
            None,
            "class-balanced test images for kNN / probe",
            nullable=True,
            low=1,
            default_doc="all on digits, else 5000",
        ),
        _CONFIG_OPTIONS,
    ),
}
