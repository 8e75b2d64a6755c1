"""``contrastive-plugins run|reproduce hcsc``: training on the embedded digits or CIFAR-10, plots,
and the HCSC vs MoCo v2 vs SimCLR reproduction on the shared CIFAR-10 subset."""

from __future__ import annotations

import time
from dataclasses import asdict, fields, replace

import numpy as np
import torch

from plugins.data import ImageTensorDataset, check_finite
from plugins.engine_settings import batch_for, per_rank_batch
from plugins.errors import UserInputError
from plugins.methods.hcsc.kmeans import scaled_cluster_sizes
from plugins.methods.hcsc.model import HCSC, HCSCConfig
from plugins.methods.hcsc.train import TrainHistory
from plugins.metrics import spectrum
from plugins.options import Option, OptionSet, config_from_options, declared, options_from_dataclass
from plugins.reporting import RunContext, RunDir

__all__ = ["run", "reproduce", "cpu_config", "fit_hcsc", "OPTIONS"]

#: fields whose CPU-scale default depends on the data set or the epochs (see :func:`cpu_config`)
_DERIVED = ("warmup_epochs", "queue_size", "cluster_sizes")


def cpu_config(
    ctx: RunContext, num_samples: int, epochs: int, image_size: int | None = None
) -> HCSCConfig:
    """The paper's config scaled to a small data set and a CPU budget (every change is named here).

    queue <= N/2 (16,384 is larger than our data sets), cluster sizes N/40 : N/60 : N/120
    (paper's 3:2:1), EMA momentum 0.99 (0.999 barely moves the key encoder in a few hundred steps),
    warm-up a quarter of the epochs (paper: 20 of 200), Adam (as the SimCLR row) unless
    ``--set optimizer=sgd``, one k-means restart. The fixed CPU-scale values are the option
    defaults in :data:`OPTIONS`; the data-dependent ones are computed here.
    """
    sizes = ctx.option("cluster_sizes", None)
    sizes = tuple(sizes) if sizes else scaled_cluster_sizes(num_samples)
    for level, (a, b) in enumerate(zip(sizes, sizes[1:])):
        if b > a:
            raise UserInputError(
                f"--set cluster_sizes={','.join(map(str, sizes))}: expected decreasing sizes, "
                f"level {level + 1} has more prototypes than level {level}."
            )
    if sizes[0] > num_samples:
        raise UserInputError(
            f"--set cluster_sizes={','.join(map(str, sizes))}: expected at most {num_samples} "
            "prototypes at level 0 (the training images)."
        )
    return config_from_options(
        ctx,
        HCSCConfig,
        exclude=("epochs", "image_size", *_DERIVED),
        epochs=epochs,
        image_size=image_size,
        warmup_epochs=ctx.option("warmup_epochs", max(1, epochs // 4)),
        queue_size=ctx.option("queue_size", min(HCSCConfig.queue_size, num_samples // 2)),
        cluster_sizes=sizes,
    )


def _plots(
    rd: RunDir,
    hist: TrainHistory,
    z_test: torch.Tensor,
    labels: torch.Tensor,
    title: str,
    embedding_map: bool = True,
):
    from plugins.reporting import pyplot

    rd.plot_loss(hist.losses)
    if embedding_map:
        rd.plot_embedding(z_test, labels, title=title)
    plt = pyplot()
    if hist.clusters is not None:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for level, (ids, phi) in enumerate(zip(hist.clusters.im2cluster, hist.clusters.density)):
            n = torch.bincount(ids.cpu(), minlength=len(phi)).numpy()
            ax.scatter(n, phi.cpu().numpy(), s=8, label=f"level {level} ({len(phi)})")
        ax.set_xlabel("samples per prototype")
        ax.set_ylabel("concentration phi")
        ax.set_xscale("log")
        ax.legend(fontsize=7)
        rd.save_figure(fig, "concentration.png")
    if hist.fn_removed:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        x = np.arange(len(hist.fn_removed)) + 1
        ax.plot(x, hist.fn_removed, marker="o", label="false negatives removed")
        ax.plot(x, hist.tn_removed, marker="o", label="true negatives removed")
        ax.plot(x, hist.nmi[: len(x)], marker="s", label="NMI level-0 prototypes")
        ax.set_xlabel("clustered epoch")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        rd.save_figure(fig, "selection.png")


def fit_hcsc(
    ctx: RunContext, train_set: ImageTensorDataset, cfg: HCSCConfig, clustering: bool = True
) -> tuple[HCSC, TrainHistory]:
    """Train :class:`HCSCTask` (MoCo v2 with ``clustering=False``) on ``train_set`` with the
    command's engine (:func:`plugins.engine.fit`: ``--devices``, ``--strategy``, ``--precision``,
    ``--accumulate``, ``--resume``; ``last.ckpt`` in ``ctx.run_dir``). ``cfg.batch_size`` is the
    global batch (split over the processes). Returns the model on ``ctx.device`` and a
    :class:`TrainHistory`: per-step losses, per clustered epoch the NMI of the level-0 prototypes
    and the false / true negatives removed (:class:`SelectionDiagnostics`), the last prototypes."""
    from plugins.data.stream import TensorImageDataModule
    from plugins.engine import fit
    from plugins.methods.hcsc.task import HCSCTask, SelectionDiagnostics

    batch = batch_for(cfg.batch_size, len(train_set))
    per_rank = per_rank_batch(batch, ctx.engine.devices)
    fields = {f: getattr(cfg, f) for f in HCSCTask.config_fields()}
    torch.manual_seed(ctx.seed)
    task = HCSCTask(
        in_channels=train_set.images.shape[1], clustering=clustering, seed=ctx.seed,
        **{**fields, "batch_size": batch},
    )  # fmt: skip
    data = TensorImageDataModule(
        train_set, val_fraction=0, batch_size=per_rank, seed=ctx.seed, drop_last=True,
        return_index=True,
    )  # fmt: skip
    selection = SelectionDiagnostics(train_set.labels)
    losses = fit(ctx, task, data, max_epochs=cfg.epochs, seed=ctx.seed, callbacks=[selection])
    log = task.cluster_log
    hist = TrainHistory(
        losses=list(losses),
        nmi=[r["nmi"] for r in log if "nmi" in r],
        fn_removed=selection.fn_removed,
        tn_removed=selection.tn_removed,
        clusters=task.clusters,
        seconds_kmeans=float(sum(r["seconds"] for r in log)),
    )
    return task.model.to(ctx.device), hist


def _train_and_evaluate(
    ctx: RunContext,
    rd: RunDir,
    train_set: ImageTensorDataset,
    test_set: ImageTensorDataset,
    cfg: HCSCConfig,
    clustering: bool,
    name: str,
    embedding_map: bool = True,
) -> dict[str, float]:
    """Train through the engine (``last.ckpt`` in ``ctx.run_dir``), evaluate, write ``rd``'s
    checkpoint (model with its key queue, the last prototypes) and plots."""
    from plugins.evaluation import embed, evaluate_representation

    t0 = time.perf_counter()
    model, hist = fit_hcsc(ctx, train_set, cfg, clustering)
    seconds = time.perf_counter() - t0
    size = cfg.image_size
    if size is not None and size != train_set.images.shape[-1]:
        train_set = _resized(train_set, size)
        test_set = _resized(test_set, size)
    metrics = evaluate_representation(model.encoder, train_set, test_set, progress=ctx.progress)
    metrics.update(train_seconds=seconds, final_loss=hist.losses[-1])
    if hist.nmi:
        metrics.update(
            nmi_level0=hist.nmi[-1],
            false_negatives_removed=hist.fn_removed[-1] if hist.fn_removed else float("nan"),
            true_negatives_removed=hist.tn_removed[-1] if hist.tn_removed else float("nan"),
            kmeans_seconds=hist.seconds_kmeans,
        )
    c = hist.clusters
    prototypes = None if c is None else {f.name: getattr(c, f.name) for f in fields(c)}
    rd.save_checkpoint(
        {"model": model.state_dict(), "prototypes": prototypes, "config": asdict(cfg),
         "method": name}
    )  # fmt: skip
    z_test = embed(model.encoder, test_set.images)
    _plots(rd, hist, z_test, test_set.labels, f"{name} (test)", embedding_map)
    rd.plot_spectrum({name: spectrum(z_test)})
    return metrics


def _resized(d: ImageTensorDataset, size: int) -> ImageTensorDataset:
    x = torch.nn.functional.interpolate(d.images, size=(size, size), mode="bilinear")
    return ImageTensorDataset(x.clamp(0, 1), d.labels, d.classes)


def run(ctx: RunContext) -> dict[str, float]:
    """Train HCSC on ``ctx.data`` (default: digits upsampled to 16 px) and evaluate kNN / linear probe."""
    from plugins.data import load_train_test

    ctx = declared(ctx, OPTIONS["run"])
    size = ctx.option("image_size", 16 if ctx.data in (None, "digits") else None)
    train_set, test_set, data_name = load_train_test(ctx.data, size=size)
    check_finite(train_set.images, f"images of {data_name}")
    epochs = ctx.epochs or (3 if ctx.demo else 40)
    cfg = cpu_config(ctx, len(train_set), epochs, size)
    per_rank_batch(min(cfg.batch_size, len(train_set)), ctx.engine.devices)  # before any work
    clustering = ctx.option("clustering")
    ctx.run_dir.save_config(
        {
            "method": "hcsc",
            "data": data_name,
            "seed": ctx.seed,
            "device": str(ctx.device),
            "clustering": clustering,
            **asdict(cfg),
        }
    )
    metrics = _train_and_evaluate(
        ctx, ctx.run_dir, train_set, test_set, cfg, clustering, "hcsc" if clustering else "moco v2"
    )  # fmt: skip
    ctx.run_dir.save_metrics(metrics)
    return metrics


def reproduce(ctx: RunContext) -> dict[str, float]:
    """HCSC vs MoCo v2 (clustering off) vs SimCLR, same encoder, epochs, batch and optimizer.

    Default: the shared CIFAR-10 subset, the first ``--set train_limit=2000`` training and
    ``test_limit=5000`` test images (balanced: rows alternate by class), resized to
    ``image_size=16`` px, batch 128, 4 epochs (1 of plain-MoCo warm-up), so that the three runs fit
    in about 10 minutes on 2 shared CPU cores. The 2-D t-SNE maps are left out here (minutes each on
    a loaded CPU); ``run`` writes them. All three train through the engine (``--devices``,
    ``--strategy``, ``--precision``, ``--accumulate``); the command's ``reproduce`` takes no
    ``--resume``, so they write no ``last.ckpt``.
    """
    from plugins.data import load_cifar10
    from plugins.evaluation import evaluate_representation
    from plugins.methods.simclr.config import SimCLRConfig
    from plugins.methods.simclr.run import fit_simclr

    ctx = declared(ctx, OPTIONS["reproduce"])
    limit, test_limit = ctx.option("train_limit"), ctx.option("test_limit")
    size = ctx.option("image_size")
    if ctx.data in (None, "cifar10"):
        train_set = load_cifar10(train=True, limit=limit)
        test_set = load_cifar10(train=False, limit=test_limit)
    else:
        from plugins.data import load_train_test

        train_set, test_set, _ = load_train_test(ctx.data)
    check_finite(train_set.images, f"images of {ctx.data or 'cifar10'}")
    if size != train_set.images.shape[-1]:
        train_set, test_set = _resized(train_set, size), _resized(test_set, size)
    data_name = (
        f"{ctx.data or 'cifar10'} ({len(train_set)} train / {len(test_set)} test, {size} px)"
    )
    epochs = ctx.epochs or 4
    cfg = cpu_config(ctx, len(train_set), epochs)
    ctx.run_dir.save_config(
        {"method": "hcsc", "reproduce": True, "data": data_name, "seed": ctx.seed, **asdict(cfg)}
    )
    per_rank_batch(min(cfg.batch_size, len(train_set)), ctx.engine.devices)  # before any work
    rows, out = [], {}
    for name, clustering in (("HCSC", True), ("MoCo v2", False)):
        key = name.lower().replace(" ", "_")
        sub = RunDir(path=ctx.run_dir.path / key)
        m = _train_and_evaluate(_stage(ctx, sub), sub, train_set, test_set, cfg, clustering, name,
                                False)  # fmt: skip
        sub.save_metrics(m)
        rows.append({"method": name, **{k: m.get(k) for k in _COLUMNS}})
        out.update({f"{name.split()[0].lower()}_{k}": v for k, v in m.items()})
    scfg = SimCLRConfig(epochs=epochs, batch_size=cfg.batch_size, arch=cfg.arch)
    t0 = time.perf_counter()
    sub = RunDir(path=ctx.run_dir.path / "simclr")
    model, _ = fit_simclr(_stage(ctx, sub), train_set, scfg)
    m = {
        **evaluate_representation(model.encoder, train_set, test_set, progress=ctx.progress),
        "train_seconds": time.perf_counter() - t0,
    }
    sub.save_metrics(m)  # as the HCSC and MoCo v2 folders have theirs
    rows.append({"method": "SimCLR", **{k: m.get(k) for k in _COLUMNS}})
    out.update({f"simclr_{k}": v for k, v in m.items()})
    for r in rows:
        r["data"], r["epochs"] = data_name, epochs
    ctx.run_dir.save_table(rows)
    ctx.run_dir.save_metrics(out)
    _plot_comparison(ctx.run_dir, rows)
    return out


def _stage(ctx: RunContext, sub: RunDir) -> RunContext:
    """``ctx`` for one of the reproduction's runs, writing into ``sub``: no ``last.ckpt`` (the
    command's ``reproduce`` takes no ``--resume``); the options are parsed already, ``used`` is
    shared."""
    return replace(ctx, run_dir=sub, option_set=None, resume=None, checkpoint_every=(None, None))


def _plot_comparison(rd: RunDir, rows: list[dict]) -> None:
    from plugins.reporting import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    x = np.arange(len(rows))
    for j, key in enumerate(("knn_acc", "linear_acc")):
        ax.bar(x + 0.38 * j, [r[key] for r in rows], 0.38, label=key)
    ax.set_xticks(x + 0.19, [r["method"] for r in rows])
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=7)
    rd.save_figure(fig, "comparison.png")


_COLUMNS = (
    "knn_acc",
    "linear_acc",
    "effective_rank",
    "nmi_level0",
    "false_negatives_removed",
    "true_negatives_removed",
    "train_seconds",
)


_CONFIG_OPTIONS = options_from_dataclass(
    HCSCConfig,
    exclude=("epochs", "image_size"),  # --epochs; image_size is a run-level key
    # CPU scale (see cpu_config); None: derived from the data set and the epochs
    defaults={
        "momentum": 0.99,
        "kmeans_restarts": 1,
        "optimizer": "adam",
        **dict.fromkeys(_DERIVED),
    },
    default_docs={
        "warmup_epochs": "a quarter of the epochs, at least 1",
        "queue_size": "min(16384, half the training images)",
        "cluster_sizes": "training images / 40, / 60, / 120",
    },
    help={
        "dim": "projection output size",
        "queue_size": "MoCo queue length",
        "momentum": "key-encoder EMA momentum (paper 0.999)",
        "temperature": "InfoNCE temperature and mean prototype concentration",
        "lr": "SGD base lr, scaled by batch/256 (optimizer=adam uses 1e-3)",
        "sgd_momentum": "SGD momentum",
        "weight_decay": "SGD weight decay (optimizer=adam uses 1e-6)",
        "batch_size": "images per step",
        "warmup_epochs": "plain-MoCo epochs before clustering starts",
        "cluster_sizes": "prototypes per hierarchy level, decreasing",
        "kmeans_iters": "Lloyd iterations per k-means",
        "kmeans_restarts": "k-means restarts per level (paper 5)",
        "instance_selection": "selective instance negatives (eq. 4-5)",
        "prototype_selection": "selective prototype negatives (eq. 6-7)",
        "prototype_loss": "the prototype InfoNCE term",
        "reference_semantics": "the authors' code (zeroed logits, off-by-one top id)",
        "cache_queue_probs": "cache the queue-to-prototype softmax (same result, faster)",
        "multi_crop": "2 global + 4 local crops",
        "local_crop_sizes": "local crop sides relative to 224-pixel global crops",
        "optimizer": "sgd (paper) or adam",
        "arch": "encoder: tiny (CPU ResNet) or a torchvision ResNet name",
        "crop_scale": "random-resized-crop area range, two numbers",
    },
    ranges={
        "dim": (1, None),
        "queue_size": (1, None),
        "momentum": (0, 1),
        "temperature": (1e-4, None),
        "lr": (0, None),
        "sgd_momentum": (0, 1),
        "weight_decay": (0, None),
        "batch_size": (2, None),
        "warmup_epochs": (0, None),
        "cluster_sizes": (2, None),
        "kmeans_iters": (1, None),
        "kmeans_restarts": (1, None),
        "local_crop_sizes": (1, 224),
        "crop_scale": (0, 1),
    },
    choices={"optimizer": ("sgd", "adam")},
)

OPTIONS = {
    "run": OptionSet(
        Option(
            "image_size",
            "int",
            None,
            "resize images to this side",
            nullable=True,
            low=8,
            default_doc="16 on digits, else the data's size",
        ),
        Option("clustering", "bool", True, "false: plain MoCo v2 (no prototypes, no selection)"),
        _CONFIG_OPTIONS,
    ),
    "reproduce": OptionSet(
        Option("train_limit", "int", 2000, "first CIFAR-10 training images used", low=10),
        Option("test_limit", "int", 5000, "first CIFAR-10 test images used", low=10),
        Option("image_size", "int", 16, "resize images to this side", low=8),
        OptionSet(_CONFIG_OPTIONS).replace("batch_size", default=128).values(),
    ),
}
