"""``contrastive-plugins run|reproduce directclr``.

``run``: trains one mode (``--set mode=directclr|baseline|simclr|linear``) on the embedded digits, the
shared CIFAR-10 subset (``--data cifar10``) or a user folder, with collapse monitoring.
``reproduce``: the paper's two linear toy simulations, then the four modes at one budget.
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace

import torch
import torch.nn.functional as F

from plugins.data import ImageTensorDataset, check_finite, load_train_test
from plugins.methods.directclr import (
    MODES,
    DirectCLR,
    DirectCLRConfig,
    default_d0,
    zero_init_residual,
)
from plugins.methods.directclr_toy import (
    alignment_diagonality,
    alignment_matrix,
    implicit_regularization_toy,
    strong_augmentation_toy,
)
from plugins.methods.directclr_train import train_directclr
from plugins.methods.simclr import TinyResNet, embed, evaluate_representation
from plugins.metrics import spectrum
from plugins.reporting import RunContext, RunDir

__all__ = ["run", "reproduce", "run_mode", "run_toys", "PAPER_CONTEXT"]

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


def _prepare(ctx: RunContext, cifar_defaults: dict):
    is_small = ctx.data in (None, "digits")
    size = ctx.option("image_size", 16 if is_small else cifar_defaults["image_size"])
    train_set, test_set, name = load_train_test(ctx.data)
    train_set, test_set = _resize(train_set, size), _resize(test_set, size)
    check_finite(train_set.images, f"images of {name}")
    return train_set, test_set, name, size


def run_mode(mode: str, train_set: ImageTensorDataset, test_set: ImageTensorDataset, cfg: DirectCLRConfig, ctx: RunContext,
             run_dir: RunDir, widths: tuple[int, ...], d0: int | None, eval_train: int | None, eval_test: int | None,
             probe_size: int = 512) -> dict:  # fmt: skip
    """Train one mode with collapse monitoring, evaluate r, write plots into ``run_dir``."""
    torch.manual_seed(ctx.seed)  # every mode starts from the same backbone weights
    backbone = TinyResNet(train_set.images.shape[1], widths=widths)
    model = DirectCLR(
        backbone,
        d0=d0,
        mode=mode,
        feat_dim=backbone.out_dim,
        num_classes=train_set.num_classes,
        config=cfg,
    )
    probe = _balanced_head(test_set, probe_size).images
    t0 = time.perf_counter()
    res = train_directclr(model, train_set, cfg, ctx.device, ctx.seed, ctx.progress, probe=probe,
                          monitor_every=int(ctx.option("monitor_every", 50)))  # fmt: skip
    train_s = time.perf_counter() - t0
    ev_tr, ev_te = _balanced_head(train_set, eval_train), _balanced_head(test_set, eval_test)
    scores = evaluate_representation(model.backbone, ev_tr, ev_te, device=ctx.device)
    z_test = embed(model.backbone, ev_te.images, device=ctx.device)
    for tracker in res.trackers.values():
        tracker.plot(run_dir)
        tracker.save(run_dir)
    run_dir.plot_loss(res.losses, name=f"loss_{mode}.png")
    run_dir.save_checkpoint({"model": model.state_dict(), "mode": mode, "d0": model.d0, "config": asdict(cfg)},
                            name=f"checkpoint_{mode}.pt")  # fmt: skip
    last = res.trackers["representation"].history[-1]
    return {
        "mode": mode, "d0": model.d0 if mode == "directclr" else None, **scores,
        "nonzero_eigenvalues": last["nonzero_eigenvalues"], "dim": model.feat_dim,
        "online_classifier_acc": sum(res.classifier_acc[-20:]) / max(1, len(res.classifier_acc[-20:])),
        "final_loss": res.losses[-1], "steps": len(res.losses), "train_s": train_s,
        "_spectrum": spectrum(z_test), "_z": z_test, "_labels": ev_te.labels,
    }  # fmt: skip


def _config(ctx: RunContext, epochs: int) -> DirectCLRConfig:
    cfg = DirectCLRConfig(epochs=epochs)
    over = {
        k: type(getattr(cfg, k))(v)
        for k, v in ctx.options.items()
        if hasattr(cfg, k) and not isinstance(getattr(cfg, k), tuple)
    }
    return replace(cfg, **over)


def run(ctx: RunContext) -> dict[str, float]:
    """Train one mode; writes config, metrics, checkpoint, loss, spectra, collapse curves, embedding map."""
    mode = ctx.option("mode", "directclr")
    if mode not in MODES:
        from plugins.errors import UserInputError

        raise UserInputError(f"--set mode must be one of {', '.join(MODES)}, got {mode!r}.")
    with ctx.cpu_threads(ctx.option("threads", 1 if ctx.device.type == "cpu" else None)):
        train_set, test_set, name, size = _prepare(ctx, {"image_size": 32})
        epochs = ctx.epochs or (6 if ctx.demo else 100)
        cfg = _config(ctx, epochs)
        cfg = replace(cfg, batch_size=int(ctx.option("batch_size", 128)))
        widths = tuple(ctx.option("widths", [16, 32, 64] if ctx.demo else [32, 64, 128]))
        d0 = ctx.option("d0", None)
        ctx.run_dir.save_config({"method": "directclr", "mode": mode, "data": name, "image_size": size, "widths": widths,
                                 "d0": d0 if d0 is not None else default_d0(widths[-1], cfg.d0_fraction), "seed": ctx.seed,
                                 "device": ctx.device, **asdict(cfg)})  # fmt: skip
        eval_n = 2000 if ctx.demo else None
        row = run_mode(mode, train_set, test_set, cfg, ctx, ctx.run_dir, widths, d0, eval_n, eval_n)
        ctx.run_dir.plot_spectrum({mode: row["_spectrum"]}, name="spectrum.png")
        m = int(ctx.option("map_points", 500))  # t-SNE cost; the map only needs a sample
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
    ``eval_train``, ``eval_test``, ``batch_size``, ``optimizer`` and the other config fields.
    """
    out: dict[str, float] = {}
    with ctx.cpu_threads(ctx.option("threads", 1 if ctx.device.type == "cpu" else None)):
        toy_rows, toy_out = run_toys(ctx.run_dir, ctx.seed)
        ctx.run_dir.save_table(toy_rows, "toy_table.md")
        out.update(toy_out)
        if ctx.option("toys_only", False):
            ctx.run_dir.save_metrics(out)
            return out
        is_small = ctx.data in (None, "digits")
        train_set, test_set, name, size = _prepare(ctx, {"image_size": 16})
        epochs = ctx.epochs or (1 if ctx.demo else (30 if is_small else 4))
        cfg = replace(_config(ctx, epochs), batch_size=int(ctx.option("batch_size", 128)))
        widths = tuple(ctx.option("widths", [16, 32, 64]))
        eval_train = ctx.option("eval_train", None if is_small else 5000)
        eval_test = ctx.option("eval_test", None if is_small else 5000)
        ctx.run_dir.save_config({"method": "directclr", "reproduce": True, "data": name, "image_size": size, "widths": widths,
                                 "eval_train": eval_train, "eval_test": eval_test, "seed": ctx.seed, **asdict(cfg)})  # fmt: skip
        rows, spectra = [], {}
        torch.manual_seed(ctx.seed)  # the weights every mode starts from, evaluated untrained
        untrained = zero_init_residual(TinyResNet(train_set.images.shape[1], widths=widths))
        ev_tr, ev_te = _balanced_head(train_set, eval_train), _balanced_head(test_set, eval_test)
        rows.append(
            {
                "mode": "random init (untrained)",
                **evaluate_representation(untrained, ev_tr, ev_te, device=ctx.device),
            }
        )
        spectra["random init"] = spectrum(embed(untrained, ev_te.images, device=ctx.device))
        for mode in ctx.option("modes", list(MODES)):
            sub = RunDir(path=ctx.run_dir.path / mode)
            row = run_mode(
                mode,
                train_set,
                test_set,
                cfg,
                ctx,
                sub,
                widths,
                ctx.option("d0", None),
                eval_train,
                eval_test,
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
