"""``contrastive-plugins run dcc`` and ``contrastive-plugins reproduce dcc``."""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from plugins.data import ImageTensorDataset, check_finite
from plugins.errors import UserInputError
from plugins.methods.dcc.condensation import (
    METHODS,
    DCCConfig,
    EvalConfig,
    condense,
    evaluate_synthetic,
    kernel_velocity,
)
from plugins.methods.dcc.data import SyntheticSet
from plugins.methods.dcc.match import Autocast
from plugins.metrics import spectrum
from plugins.options import Option, OptionSet, config_from_options, options_from_dataclass
from plugins.progress import phase
from plugins.reporting import RunContext, RunDir
from plugins.threads import cpu_is_busy

__all__ = ["run", "reproduce", "save_grids", "PAPER_CIFAR10", "OPTIONS"]

# CIFAR-10, ConvNet-3, test accuracy % (mean ± std) from the papers, for context only. The DC values
# are DC Table 1; the DCC values were quoted without the PDF at hand and are marked unverified.
PAPER_CIFAR10 = {
    ("random", 1): "14.4 ± 2.0 (DC Table 1)",
    ("random", 10): "26.0 ± 1.2 (DC Table 1)",
    ("dc", 1): "28.3 ± 0.5 (DC Table 1)",
    ("dc", 10): "44.9 ± 0.5 (DC Table 1)",
    ("dcc", 1): "34.0 ± 0.7 (DCC CIFAR-10 table, DSA; unverified)",
    ("dcc", 10): "54.5 ± 0.5 (DCC CIFAR-10 table, DSA; unverified)",
}


def _load(data: str | None, size: int | None) -> tuple[ImageTensorDataset, ImageTensorDataset, str]:
    from plugins.data import load_train_test

    train, test, name = load_train_test(data)
    if size is not None and size != train.images.shape[-1]:
        import torch.nn.functional as F

        def resize(d: ImageTensorDataset) -> ImageTensorDataset:
            x = F.interpolate(d.images, size=(size, size), mode="bilinear", antialias=True)
            return ImageTensorDataset(x.clamp(0, 1), d.labels, d.classes)

        train, test = resize(train), resize(test)
    check_finite(train.images, f"training images of {name}")
    return train, test, name


def save_grids(run_dir: RunDir, synthetic: SyntheticSet, prefix: str = "synthetic") -> None:
    """One PNG with every class as a row, one PNG per class, and the ``.pt`` tensors."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torchvision.utils import make_grid

    px = synthetic.pixels()
    ipc = synthetic.ipc

    def show(images: torch.Tensor, nrow: int, title: str, name: str) -> None:
        grid = make_grid(images, nrow=nrow, padding=1, pad_value=1.0).permute(1, 2, 0).numpy()
        fig, ax = plt.subplots(figsize=(max(2.0, 0.5 * nrow), max(2.0, 0.5 * len(images) / nrow)))
        ax.imshow(grid.squeeze(-1) if grid.shape[-1] == 1 else grid, cmap="gray")
        ax.set_axis_off()
        ax.set_title(title, fontsize=8)
        run_dir.save_figure(fig, name)

    if ipc == 1:  # one row of classes rather than a thin column
        title = f"{synthetic.method}: {', '.join(synthetic.classes)}"
        show(px, len(synthetic.classes), title, f"{prefix}_grid.png")
    else:
        title = f"{synthetic.method}: rows = {', '.join(synthetic.classes)}"
        show(px, ipc, title, f"{prefix}_grid.png")
    for c, cname in enumerate(synthetic.classes):
        safe = "".join(ch if ch.isalnum() else "_" for ch in cname)
        show(px[c * ipc : (c + 1) * ipc], ipc, cname, f"{prefix}_class_{c}_{safe}.png")
    synthetic.save(run_dir / f"{prefix}.pt")


def _kernel_plot(run_dir: RunDir, velocities: dict[str, list[float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for label, v in velocities.items():
        ax.plot(np.arange(1, len(v) + 1), v, marker="o", ms=3, label=label)
    ax.set_xlabel("network update on the synthetic set")
    ax.set_ylabel("kernel distance d(K_t, K_t+1)")
    ax.set_yscale("log")
    ax.set_title("empirical NTK velocity (probe: real test images)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    run_dir.save_figure(fig, "kernel_velocity.png")


def _threads_policy(ctx: RunContext) -> Any:
    """One thread on a busy CPU (load average >= cores): the ConvNet's small convolutions ran ~10x
    slower with 2 OpenMP threads than with 1 on a 2-core machine at load ~12 (measured)."""
    busy = ctx.device.type == "cpu" and cpu_is_busy() and "OMP_NUM_THREADS" not in os.environ
    return ctx.cpu_threads(1 if busy else None)


def run(ctx: RunContext) -> dict[str, float]:
    """Condense, evaluate and plot (see :func:`_run`); ``contrastive-plugins run dcc``."""
    with _threads_policy(ctx) as threads:
        return _run(ctx, threads)


def reproduce(ctx: RunContext) -> dict[str, float]:
    """Random selection vs DC vs DCC on the CIFAR-10 subset at ipc 1 and 10 (see :func:`_reproduce`)."""
    with _threads_policy(ctx) as threads:
        return _reproduce(ctx, threads)


def _autocast(ctx: RunContext) -> Autocast:
    """The forward passes' autocast for ``--precision`` (``None`` for 32-true, the float32 path
    unchanged). DCC's own loops take bf16-mixed (and 16-mixed on CUDA) through
    :func:`plugins.engine_settings.autocast`; 64-true is refused."""
    settings = ctx.engine
    if settings.precision == "64-true":
        raise UserInputError(
            "dcc does not take --precision 64-true: its condensation and evaluation run in float32 "
            "or under autocast (32-true, bf16-mixed, 16-mixed on CUDA)."
        )
    settings.check(torch.device(ctx.device))
    if settings.precision == "32-true":
        return None
    from plugins.engine_settings import autocast

    return lambda: autocast(ctx)


def _condense_config(ctx: RunContext) -> DCCConfig:
    """:class:`DCCConfig` from the options; ``--epochs`` sets ``outer_iters``."""
    cfg = config_from_options(ctx, DCCConfig)
    if ctx.epochs:
        cfg.outer_iters = ctx.epochs
    return cfg


def _eval_config(ctx: RunContext, cfg: DCCConfig) -> EvalConfig:
    """:class:`EvalConfig` from the ``eval_*`` options, with the condensation's ConvNet shape."""
    values = {f: ctx.option(f"eval_{f}") for f in _EVAL_FIELDS}
    return EvalConfig(**values, width=cfg.width, depth=cfg.depth)


def _stages(cfg: DCCConfig, ecfg: EvalConfig, ipc: int) -> dict[str, int]:
    """The effective iteration counts of every stage (recorded in ``config.yaml``)."""
    inner, net_epochs = cfg.resolved_loops(ipc)
    return {
        "outer_iters": cfg.outer_iters,
        "inner_loops": inner,
        "net_epochs": net_epochs,
        "warmup_outer": cfg.resolved_warmup_outer(),
        "warmup_inner": cfg.warmup_inner,
        "eval_epochs": ecfg.epochs,
    }


def _run(ctx: RunContext, threads: int) -> dict[str, float]:
    """Condense the data (default: digits), evaluate N fresh ConvNets on it, write the run folder.

    Digits are resized to 16x16 by default: at 8x8 the third block's instance norm sees 2x2 maps
    and the image gradients of the matching loss are ~100x those at 16x16 (measured), which wrecks
    the images at the papers' image learning rate.

    Options (``--set``, see ``run dcc --help``): the condensation settings of :class:`DCCConfig`
    (``outer_iters`` is also ``--epochs``), ``method`` (dcc | dc | random), ``ipc``, ``image_size``,
    the evaluation's ``eval_*`` settings and ``n_models``, ``probe`` and ``kernel_steps`` of the
    NTK diagnostic, ``test_limit``. The condensation loop writes ``last.ckpt`` periodically and
    continues from ``--resume``.
    """
    amp = _autocast(ctx)
    method = ctx.option("method")
    ipc = ctx.option("ipc")
    cfg = _condense_config(ctx)
    ecfg = _eval_config(ctx, cfg)
    n_models = ctx.option("n_models")
    size = ctx.option("image_size", 16 if ctx.data in (None, "digits") else None)
    train, test, name = _load(ctx.data, size)
    limit = ctx.option("test_limit")
    if limit is not None and limit < len(test):
        test = test.subset(torch.arange(limit))
    probe_size, steps = ctx.option("probe"), ctx.option("kernel_steps")
    stages = {**_stages(cfg, ecfg, ipc), "kernel_steps": steps}
    inner, net_epochs = stages["inner_loops"], stages["net_epochs"]
    effective = dataclasses.replace(
        cfg, inner_loops=inner, net_epochs=net_epochs, warmup_outer=stages["warmup_outer"]
    )
    ctx.run_dir.save_config(
        {
            "method": "dcc",
            "variant": method,
            "data": name,
            "image_size": train.images.shape[-1],
            "test_images": len(test),
            "ipc": ipc,
            "seed": ctx.seed,
            "device": ctx.device,
            "n_models": n_models,
            "cpu_threads": threads,
            "stages": stages,
            "condense": asdict(effective),
            "evaluate": asdict(ecfg),
        }
    )
    t0 = time.time()
    syn = condense(
        train, ipc, method, cfg.dsa, cfg.outer_iters, cfg, ctx.device, ctx.seed, ctx.progress,
        checkpointer=ctx.checkpointer(stages=("condense",)), autocast=amp,
    )  # fmt: skip
    seconds = time.time() - t0
    save_grids(ctx.run_dir, syn)
    ctx.run_dir.save_checkpoint(
        {
            "images": syn.images.cpu(),
            "labels": syn.labels.cpu(),
            "mean": syn.mean,
            "std": syn.std,
            "classes": syn.classes,
            "config": asdict(effective),
        }
    )
    scores, models = evaluate_synthetic(
        syn, test, n_models, ecfg, ctx.device, ctx.seed, progress=ctx.progress,
        return_models=True, autocast=amp,
    )  # fmt: skip
    baseline = condense(train, ipc, "random", device=ctx.device, seed=ctx.seed)
    base_scores = evaluate_synthetic(
        baseline, test, n_models, ecfg, ctx.device, ctx.seed, progress=ctx.progress, autocast=amp
    )

    x_test = syn.normalise(test.images.to(ctx.device))
    with torch.no_grad():
        z = torch.cat([models[0].embed(x) for x in x_test.split(1000)]).cpu()
    ctx.run_dir.plot_loss(syn.losses or [float("nan")], xlabel="outer iteration")
    ctx.run_dir.plot_spectrum({f"{method} ipc {ipc}": spectrum(z)})
    ctx.run_dir.plot_embedding(
        z, test.labels, title=f"ConvNet trained on {method} ipc {ipc} ({name})"
    )
    probe = x_test[:probe_size]
    syn_dev = SyntheticSet(
        syn.images.to(ctx.device), syn.labels.to(ctx.device), syn.mean, syn.std, syn.classes
    )
    with phase(f"NTK kernel velocity ({steps} updates)", show=ctx.progress):
        velocity = kernel_velocity(
            syn_dev, probe, steps, cfg.lr_net, cfg.width, cfg.depth, ctx.seed
        )
    _kernel_plot(ctx.run_dir, {f"{method} ipc {ipc}": velocity})
    metrics = {
        **scores,
        "random_acc_mean": base_scores["acc_mean"],
        "random_acc_std": base_scores["acc_std"],
        "condense_seconds": seconds,
        "contrastive_steps": float(syn.contrastive_steps),
        "final_matching_loss": syn.losses[-1] if syn.losses else float("nan"),
        "kernel_velocity_first": velocity[0] if velocity else float("nan"),
        "kernel_velocity_last": velocity[-1] if velocity else float("nan"),
    }
    ctx.run_dir.save_metrics(metrics)
    return metrics


def _reproduce(ctx: RunContext, threads: int) -> dict[str, float]:
    """Random selection vs DC vs DCC on the CIFAR-10 subset at ipc 1 and 10, on a CPU budget.

    Budget cuts (all ``--set`` options; paper values in brackets): ``outer_iters`` 240 [1000]
    (the shortest budget at which DCC > DC showed here; ``--epochs 15`` is a 7-minute check),
    ``batch_real`` 32 [256], ``width`` 32 [128], ``image_size`` 16 [32], ``net_epochs`` 5 [5 at
    ipc 1, 50 at ipc 10], ``eval_epochs`` 100 [1000], ``n_models`` 4 [5 to 20], ``test_limit`` 2000
    test images [10k]. Each row's condensation is independent, so this command is not resumable.
    """
    amp = _autocast(ctx)
    data = ctx.data or "cifar10"
    train, test, name = _load(data, ctx.option("image_size"))
    limit = ctx.option("test_limit")
    if limit is not None and limit < len(test):
        test = test.subset(torch.arange(limit))  # rows alternate by class: balanced
    cfg = _condense_config(ctx)
    ecfg = _eval_config(ctx, cfg)
    ipcs = ctx.option("ipcs")
    methods = ctx.option("methods")
    n_models = ctx.option("n_models")
    settings = {
        "data": name,
        "image_size": train.images.shape[-1],
        "test_images": len(test),
        "condense": asdict(cfg),
        "stages": {f"ipc{ipc}": _stages(cfg, ecfg, ipc) for ipc in ipcs},
        "eval": asdict(ecfg),
        "n_models": n_models,
        "seed": ctx.seed,
        "cpu_threads": threads,
    }
    ctx.run_dir.save_config({"method": "dcc", "reproduce": settings})
    rows, out, curves = [], {}, {}
    for ipc in ipcs:
        for method in methods:
            t0 = time.time()
            syn = condense(
                train, ipc, method, cfg.dsa, cfg.outer_iters, cfg, ctx.device, ctx.seed,
                ctx.progress, autocast=amp,
            )  # fmt: skip
            t1 = time.time()
            scores = evaluate_synthetic(
                syn, test, n_models, ecfg, ctx.device, ctx.seed, progress=ctx.progress,
                autocast=amp,
            )  # fmt: skip
            t2 = time.time()
            save_grids(ctx.run_dir, syn, prefix=f"ipc{ipc}_{method}")
            if syn.losses:
                curves[f"{method} ipc {ipc}"] = syn.losses
            acc = f"{100 * scores['acc_mean']:.1f} ± {100 * scores['acc_std']:.1f}"
            rows.append(
                {
                    "ipc": ipc,
                    "method": method,
                    "test acc % (ours, mean ± std)": acc,
                    "paper (full budget)": PAPER_CIFAR10.get((method, ipc), "")
                    if name == "cifar10"
                    else "",
                    "contrastive steps": syn.contrastive_steps,
                    "condense s": f"{t1 - t0:.1f}",
                    "eval s": f"{t2 - t1:.1f}",
                }
            )
            out[f"ipc{ipc}_{method}_acc_mean"] = scores["acc_mean"]
            out[f"ipc{ipc}_{method}_acc_std"] = scores["acc_std"]
            ctx.run_dir.save_table(
                rows, "table.md"
            )  # written as it grows: a cut run keeps its rows
            ctx.run_dir.save_metrics(out)
    if curves:
        ctx.run_dir.plot_loss(curves, xlabel="outer iteration")
    return out


# ---------------------------------------------------------------- options (run dcc --help)

_EVAL_FIELDS = tuple(
    f.name for f in dataclasses.fields(EvalConfig) if f.name not in ("width", "depth")
)

_CONDENSE_OPTIONS = options_from_dataclass(
    DCCConfig,
    help={
        "outer_iters": "outer iterations, each with a fresh ConvNet (--epochs sets it too)",
        "batch_real": "real images per class per matching step",
        "lr_img": "SGD learning rate of the synthetic images",
        "momentum_img": "SGD momentum of the synthetic images",
        "lr_net": "SGD learning rate of the inner network updates",
        "batch_train": "batch of the inner network updates",
        "inner_loops": "image updates per outer iteration (none: the papers' table for ipc)",
        "net_epochs": "network epochs between image updates (none: the papers' table for ipc)",
        "warmup_outer": "DCC: outer iterations of DC before contrastive (none: 25% of outer_iters)",
        "warmup_inner": "DCC: contrastive from this image update of an outer iteration on",
        "dsa": "DSA augmentation in matching and network updates",
        "init": "synthetic images start as random real images or noise",
        "width": "ConvNet width (condensation and evaluation)",
        "depth": "ConvNet blocks (each halves the image side)",
    },
    ranges={
        "outer_iters": (1, None),
        "batch_real": (1, None),
        "lr_img": (0, None),
        "momentum_img": (0, 1),
        "lr_net": (0, None),
        "batch_train": (1, None),
        "inner_loops": (1, None),
        "net_epochs": (0, None),
        "warmup_outer": (0, None),
        "warmup_inner": (0, None),
        "width": (1, None),
        "depth": (1, None),
    },
    choices={"init": ("real", "noise")},
    demo_defaults={"outer_iters": 2, "batch_real": 16, "width": 32},
)

_EVAL_OPTIONS = [
    dataclasses.replace(o, name=f"eval_{o.name}")
    for o in options_from_dataclass(
        EvalConfig,
        exclude=("width", "depth"),
        help={
            "epochs": "training epochs of each evaluation ConvNet",
            "batch_size": "evaluation batch size",
            "lr": "evaluation SGD learning rate (x0.1 at half the epochs)",
            "momentum": "evaluation SGD momentum",
            "weight_decay": "evaluation SGD weight decay",
            "dsa": "DSA augmentation while training the evaluation ConvNets",
        },
        ranges={
            "epochs": (1, None),
            "batch_size": (1, None),
            "lr": (0, None),
            "momentum": (0, 1),
            "weight_decay": (0, None),
        },
        demo_defaults={"epochs": 30},
    )
]

_RUN_LEVEL = [
    Option("method", "str", "dcc", "dcc (contrastive), dc (class-wise) or random selection", choices=METHODS),
    Option("ipc", "int", 10, "synthetic images per class", demo_default=1, low=1),
    Option(
        "image_size", "int", None, "resize the images to this side", nullable=True, low=1,
        default_doc="16 on digits, else the data's size",
    ),
    Option("n_models", "int", 5, "evaluation ConvNets (mean and std over them)", demo_default=2, low=1),
    Option("probe", "int", 10, "test images of the NTK kernel-velocity probe", demo_default=5, low=1),
    Option("kernel_steps", "int", 10, "network updates of the NTK diagnostic", demo_default=2, low=0),
    Option("test_limit", "int", None, "use the first N test images (none: all)", nullable=True, low=1),
]  # fmt: skip

_REPRO_LEVEL = [
    Option("ipcs", "int", [1, 10], "images per class of the table's blocks", many=True, low=1),
    Option(
        "methods", "str", ["random", "dc", "dcc"], "the table's rows per ipc", many=True,
        choices=METHODS,
    ),
    Option("image_size", "int", 16, "resize the images to this side (paper 32)", nullable=True, low=1),
    Option("n_models", "int", 4, "evaluation ConvNets per row (paper 5 to 20)", low=1),
    Option("test_limit", "int", 2000, "use the first N test images (none: all)", nullable=True, low=1),
]  # fmt: skip

# reproduce: CPU-budget defaults (paper values in brackets in :func:`_reproduce`)
_REPRO_CONDENSE = (
    OptionSet(_CONDENSE_OPTIONS, _EVAL_OPTIONS)
    .replace("outer_iters", default=240, demo_default=None)
    .replace("batch_real", default=32, demo_default=None)
    .replace("width", default=32, demo_default=None)
    .replace("net_epochs", default=5, help="network epochs between image updates (paper 5 at ipc 1, 50 at ipc 10)")
    .replace("eval_epochs", default=100, demo_default=None)
)  # fmt: skip

OPTIONS = {
    "run": OptionSet(_RUN_LEVEL, _CONDENSE_OPTIONS, _EVAL_OPTIONS),
    "reproduce": OptionSet(_REPRO_LEVEL, _REPRO_CONDENSE.values()),
}
