"""``contrastive-plugins run claws`` and ``contrastive-plugins reproduce claws``."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from agri_ext.augment import ClawsViews
from agri_ext.config import CONTRASTS, EVAL_BRANCHES, MASKS, WITHIN_CLASS_MODES, CLAWSConfig
from agri_ext.data import load_claws_data
from agri_ext.mask import compute_masks
from agri_ext.model import CLAWS
from agri_ext.train import (
    embed_branch,
    evaluate_clustering,
    resize,
    steps_per_epoch,
)
from plugins import options as _options
from plugins.data import ImageTensorDataset
from plugins.errors import UserInputError
from plugins.metrics import effective_rank, spectrum
from plugins.options import Option, OptionSet, options_from_dataclass
from plugins.progress import phase
from plugins.reporting import RunContext, RunDir, pyplot

__all__ = ["run", "reproduce", "VARIANTS", "config_from_options", "plot_mask_grid", "OPTIONS"]

# The reproduction's five rows (issue 11): baselines and CLAWS variants, as config overrides.
VARIANTS: dict[str, dict] = {
    "SimCLR": dict(contrast="all", mask="none", shared_encoder=True),
    "supervised SimCLR": dict(contrast="supcon", mask="none", shared_encoder=True),
    "CLAWS without mask": dict(contrast="within", mask="none"),
    "CLAWS (pixel mask)": dict(contrast="within", mask="pixel"),
    "CLAWS (feature mask)": dict(contrast="within", mask="feature"),
}

KEYS = ("gmm_nmi", "gmm_ari", "gmm_ami", "gmm_acc", "kmeans_nmi", "masked_gmm_nmi", "crop_gmm_nmi")

# epochs of a --demo run (CPU seconds); the other CPU-scale defaults of the demo and of the
# reproduction are declared once in OPTIONS below
DEMO_EPOCHS = 2
_RUN_KEYS = ("seeds", "variants", "train_limit", "test_limit")


def config_from_options(options: dict, base: dict | None = None) -> CLAWSConfig:
    """A :class:`CLAWSConfig` from ``base`` then ``key=value`` options, for Python callers (the
    command reads the declared :data:`OPTIONS` instead); unknown keys are rejected."""
    fields = {f.name for f in dataclasses.fields(CLAWSConfig)}
    values = dict(base or {})
    for key, value in options.items():
        if key in _RUN_KEYS:
            continue
        if key not in fields:
            raise UserInputError(
                f"unknown option '{key}' for claws; choose from: {', '.join(sorted(fields))}."
            )
        values[key] = tuple(value) if isinstance(value, list) else value
    return CLAWSConfig(**values).validate()


def _limit(d: ImageTensorDataset, n: int | None, seed: int) -> ImageTensorDataset:
    if n is None or n >= len(d):
        return d
    g = torch.Generator().manual_seed(seed)
    return d.subset(torch.randperm(len(d), generator=g)[:n].sort().values)


def plot_mask_grid(
    run_dir: RunDir, data: ImageTensorDataset, cfg: CLAWSConfig, name: str = "masks.png"
) -> None:
    """One image per class (up to 8): the image, its hard mask and a masked crop view ``x_c``."""
    plt = pyplot()
    labels = data.labels
    first = [int(torch.nonzero(labels == c)[0]) for c in torch.unique(labels)[:8]]
    x = resize(data.images[first], cfg.image_size)
    m, _ = compute_masks(x, min_exg=cfg.min_exg, min_fraction=cfg.min_mask_fraction)
    torch.manual_seed(0)
    pixel_cfg = dataclasses.replace(cfg, mask="pixel")
    _, x_c = ClawsViews(x.shape[-1], pixel_cfg)(x, m)
    rows = [("image", x), ("mask", m), ("masked crop x_c", x_c)]
    fig, axes = plt.subplots(3, len(first), figsize=(1.6 * len(first), 5.2), squeeze=False)
    for r, (title, imgs) in enumerate(rows):
        for c in range(len(first)):
            img = imgs[c].permute(1, 2, 0).numpy()
            ax = axes[r, c]
            ax.imshow(img[..., 0] if img.shape[-1] != 3 else img, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(title, fontsize=8)
            if r == 0:
                ax.set_title(str(data.classes[int(labels[first[c]])])[:14], fontsize=7)
    run_dir.save_figure(fig, name)


def _masked_nmi(model: CLAWS, test_set: ImageTensorDataset, seed: int) -> float:
    """Control: GMM NMI of the full-image encoder on hard-masked test images, so the gain of removing
    soil at test time is told apart from what masked training learnt."""
    z = embed_branch(model, test_set.images, "image", masked=True)
    return evaluate_clustering(z, test_set.labels, seed, ("gmm",))["gmm_nmi"]


def _train_and_score(
    train_set: ImageTensorDataset,
    test_set: ImageTensorDataset,
    cfg: CLAWSConfig,
    ctx: RunContext,
    seed: int,
    crop_branch: bool = False,
    resumable: bool = False,
) -> tuple[object, list[float], dict[str, float], torch.Tensor]:
    t0 = time.time()
    model, losses, info = fit_claws(ctx, train_set, cfg, seed, resumable=resumable)
    z = embed_branch(model, test_set.images, cfg.eval_branch)
    with phase("clustering (GMM, k-means) and NMI", show=ctx.progress):
        scores = evaluate_clustering(z, test_set.labels, seed=seed)
        scores["masked_gmm_nmi"] = _masked_nmi(model, test_set, seed)
        if crop_branch and cfg.eval_branch != "crop":
            zc = embed_branch(model, test_set.images, "crop")
            gmm = evaluate_clustering(zc, test_set.labels, seed, ("gmm",))
            scores["crop_gmm_nmi"] = gmm["gmm_nmi"]
    scores.update(
        effective_rank=effective_rank(z),
        final_loss=losses[-1],
        mask_fallbacks=info["mask_fallbacks"],
        train_seconds=time.time() - t0,
    )
    return model, losses, scores, z


def fit_claws(
    ctx: RunContext, train_set: ImageTensorDataset, cfg: CLAWSConfig, seed: int,
    resumable: bool = False,
) -> tuple[CLAWS, list[float], dict[str, float]]:  # fmt: skip
    """Train :class:`CLAWSTask` on ``train_set`` with the command's engine
    (:func:`plugins.engine.fit`: ``--devices``, ``--strategy``, ``--precision``, ``--accumulate``;
    with ``resumable``, ``last.ckpt`` and ``--resume``). ``cfg.batch_size`` is the global batch.
    Returns the model on ``ctx.device``, the per-step losses and ``mask_fallbacks`` (images whose
    vegetation mask fell back to the whole image, counted over the first epoch)."""
    from agri_ext.datamodule import CLAWSDataModule
    from agri_ext.task import CLAWSTask
    from plugins.engine import LossRecorder, fit

    if ctx.engine.devices > 1 and cfg.batch_size < ctx.engine.devices:
        raise UserInputError(
            f"batch_size {cfg.batch_size} is smaller than the {ctx.engine.devices} processes; "
            "each needs at least one image of every batch."
        )
    fields = {f: getattr(cfg, f) for f in CLAWSTask.config_fields()}
    torch.manual_seed(seed)
    task = CLAWSTask(in_channels=train_set.images.shape[1], **fields)
    data = CLAWSDataModule.for_config(train_set, cfg, seed)
    recorder = LossRecorder(extra=("mask_fallbacks",))
    fit(ctx, task, data, max_epochs=cfg.epochs, seed=seed, recorder=recorder,
        resumable=resumable)  # fmt: skip
    per_epoch = max(1, len(recorder.losses) // max(1, cfg.epochs))
    fallbacks = float(sum(recorder.extra["mask_fallbacks"][:per_epoch]))
    return task.model.to(ctx.device), recorder.losses, {"mask_fallbacks": fallbacks}


def _config(ctx: RunContext, **base: object) -> CLAWSConfig:
    """:class:`CLAWSConfig` from the declared options (``base``: values of keys the command does not
    declare, e.g. a reproduction row's variant), with ``--epochs`` (else the demo's or the config's)."""
    cfg = _options.config_from_options(ctx, CLAWSConfig, exclude=("epochs",), **base)
    cfg.epochs = ctx.epochs or (DEMO_EPOCHS if ctx.demo else cfg.epochs)
    return cfg.validate()


def _stages(cfg: CLAWSConfig, train_labels: torch.Tensor) -> dict[str, int]:
    """The effective training length (recorded in ``config.yaml``)."""
    homogeneous = cfg.contrast == "within" and cfg.within_class == "batch"
    per_epoch = steps_per_epoch(train_labels, cfg.batch_size, homogeneous)
    return {"epochs": cfg.epochs, "steps_per_epoch": per_epoch, "steps": cfg.epochs * per_epoch}


def run(ctx: RunContext) -> dict[str, float]:
    """Train one CLAWS configuration (``--set mask=feature`` etc.), cluster the test embedding with a
    GMM and k-means, and write config, metrics, checkpoint and plots. The training loop writes
    ``last.ckpt`` periodically and continues from ``--resume``."""
    cfg = _config(ctx)
    train_set, test_set, data_name = load_claws_data(ctx.data, size=cfg.image_size, seed=ctx.seed)
    train_set = _limit(train_set, ctx.option("train_limit"), ctx.seed)
    test_set = _limit(test_set, ctx.option("test_limit"), ctx.seed)
    ctx.run_dir.save_config(
        {
            "method": "claws",
            "data": data_name,
            "seed": ctx.seed,
            "device": ctx.device,
            "train_images": len(train_set),
            "test_images": len(test_set),
            "data_image_size": int(train_set.images.shape[-1]),
            "stages": {"train": _stages(cfg, train_set.labels)},
            **asdict(cfg),
        }
    )
    model, losses, metrics, z = _train_and_score(
        train_set, test_set, cfg, ctx, ctx.seed, crop_branch=cfg.contrast == "within",
        resumable=True,
    )  # fmt: skip
    ctx.run_dir.save_checkpoint(
        {"model": model.state_dict(), "config": asdict(cfg), "classes": train_set.classes}
    )
    ctx.run_dir.plot_loss(losses)
    ctx.run_dir.plot_spectrum({f"claws ({cfg.eval_branch} branch)": spectrum(z)})
    with threadpool_limits(limits=1):  # t-SNE with oversubscribed OpenMP is ~15x slower here
        ctx.run_dir.plot_embedding(z, test_set.labels, title=f"CLAWS on {data_name} (test)")
    plot_mask_grid(ctx.run_dir, train_set, cfg)
    ctx.run_dir.save_metrics(metrics)
    return metrics


def _mean_std(values: list[float]) -> str:
    a = np.asarray(values, dtype=float)
    return f"{a.mean():.4f} ± {a.std(ddof=1) if len(a) > 1 else 0.0:.4f}"


def reproduce(ctx: RunContext) -> dict[str, float]:
    """Issue 11's table: GMM clustering of the test embedding for SimCLR, supervised SimCLR and three
    CLAWS variants, mean ± std over seeds, on the shared plant seedlings (default) at CPU scale."""
    data = ctx.data or "crops"
    seeds = [ctx.seed + s for s in range(ctx.option("seeds"))]
    names = ctx.option("variants")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise UserInputError(f"unknown variants {unknown}; choose from {list(VARIANTS)}.")
    if not names:
        raise UserInputError("--set variants= names no variant; give at least one.")
    configs = {n: _config(ctx, **VARIANTS[n]) for n in names}
    size = configs[names[0]].image_size
    train_set, test_set, data_name = load_claws_data(data, size=size, seed=ctx.seed)
    train_set = _limit(train_set, ctx.option("train_limit"), ctx.seed)
    test_set = _limit(test_set, ctx.option("test_limit"), ctx.seed)
    ctx.run_dir.save_config(
        {
            "method": "claws",
            "data": data_name,
            "seeds": seeds,
            "train_images": len(train_set),
            "test_images": len(test_set),
            "stages": {n: _stages(c, train_set.labels) for n, c in configs.items()},
            "variants": {n: asdict(c) for n, c in configs.items()},
        }
    )
    plot_mask_grid(ctx.run_dir, train_set, configs[names[0]])
    rows, out, curves, spectra = [], {}, {}, {}
    # context row: the same encoder untrained, so a learned row can be told apart from architecture
    random_scores = []
    with phase("random init: clustering (GMM, k-means) and NMI", show=ctx.progress):
        for seed in seeds:
            torch.manual_seed(seed)
            untrained = CLAWS(train_set.images.shape[1], configs[names[0]]).to(ctx.device)
            z0 = embed_branch(untrained, test_set.images, "image")
            random_scores.append(evaluate_clustering(z0, test_set.labels, seed=seed))
            random_scores[-1]["masked_gmm_nmi"] = _masked_nmi(untrained, test_set, seed)
    spectra["random init"] = spectrum(z0)
    row = {"variant": "random init (no training)"}
    for key in ("gmm_nmi", "gmm_ari", "gmm_ami", "gmm_acc", "kmeans_nmi", "masked_gmm_nmi"):
        row[key] = _mean_std([s[key] for s in random_scores])
        out[f"random init/{key}"] = float(np.mean([s[key] for s in random_scores]))
    rows.append(row)
    for name in names:
        cfg = configs[name]
        per_seed = []
        for seed in seeds:
            _, losses, scores, z = _train_and_score(
                train_set, test_set, cfg, ctx, seed, crop_branch=cfg.contrast == "within"
            )
            per_seed.append(scores)
            if seed == seeds[0]:
                curves[name] = losses
                spectra[name] = spectrum(z)
                slug = name.lower().replace(" ", "_").replace("(", "").replace(")", "")
                with threadpool_limits(limits=1):
                    ctx.run_dir.plot_embedding(
                        z,
                        test_set.labels,
                        name=f"embedding_{slug}.png",
                        title=f"{name} ({data_name})",
                    )
        row = {"variant": name}
        for key in KEYS:
            vals = [s[key] for s in per_seed if key in s]
            if vals:
                row[key] = _mean_std(vals)
                out[f"{name}/{key}"] = float(np.mean(vals))
        row["train_s"] = f"{np.mean([s['train_seconds'] for s in per_seed]):.0f}"
        rows.append(row)
    ctx.run_dir.plot_loss(curves)
    ctx.run_dir.plot_spectrum(spectra)
    ctx.run_dir.save_table(rows)
    ctx.run_dir.save_metrics(out)
    return out


# ------------------------------------------------------------- options (run claws --help)

_CLAWS_OPTIONS = options_from_dataclass(
    CLAWSConfig,
    exclude=("epochs",),  # --epochs
    help={
        "temperature": "NT-Xent temperature (paper 0.5)",
        "projection_dim": "projector output size (paper 64)",
        "lr": "Adam learning rate (paper 3e-4)",
        "batch_size": "images per step (paper 128)",
        "mask": "hard attention: pixel (the paper's), feature (authors' code option) or none",
        "contrast": "within (CLAWS), all (SimCLR) or supcon (supervised SimCLR)",
        "within_class": "contrast=within by masking other classes (mask) or one-class batches (batch)",
        "shared_encoder": "one encoder for both views (the paper uses two)",
        "arch": "encoder: tiny (CPU ResNet with widths) or a torchvision ResNet name",
        "widths": "TinyResNet stage widths (arch=tiny)",
        "image_size": "resize the images to this side",
        "crop_scale": "random-resized-crop area range of x_i, two numbers",
        "crop_scale_c": "random-crop area range of the masked view x_c, two numbers",
        "jitter_strength": "colour jitter strength (paper 1: 0.8, 0.8, 0.8, 0.2)",
        "p_jitter": "probability of colour jitter (paper 0.8)",
        "p_gray": "probability of grayscale (paper 0.2)",
        "supcon_temperature": "temperature of contrast=supcon (Khosla et al. 0.1)",
        "eval_branch": "encoder embedded for clustering: image (full image) or crop (masked)",
        "min_exg": "least excess green (3g - 1) of a vegetation pixel",
        "min_mask_fraction": "masks smaller than this fraction fall back to the whole image",
    },
    ranges={
        "temperature": (1e-4, None),
        "projection_dim": (1, None),
        "lr": (0, None),
        "batch_size": (2, None),
        "widths": (1, None),
        "image_size": (4, None),
        "crop_scale": (0, 1),
        "crop_scale_c": (0, 1),
        "jitter_strength": (0, None),
        "p_jitter": (0, 1),
        "p_gray": (0, 1),
        "supcon_temperature": (1e-4, None),
        "min_exg": (-1, 2),
        "min_mask_fraction": (0, 1),
    },
    choices={
        "mask": MASKS,
        "contrast": CONTRASTS,
        "within_class": WITHIN_CLASS_MODES,
        "eval_branch": EVAL_BRANCHES,
    },
    demo_defaults={"widths": [16, 32, 64], "image_size": 8},
    default_docs={"image_size": "the data's (digits 16, image folders 64); 8 with --demo"},
)

_LIMITS = [
    Option(
        "train_limit", "int", None, "use N random training images (none: all)",
        demo_default=400, nullable=True, low=2,
    ),
    Option("test_limit", "int", None, "use N random test images (none: all)", nullable=True, low=2),
]  # fmt: skip

# the reproduction's CPU scale: smaller encoders and 24x24 images; its rows set mask, contrast and
# shared_encoder (VARIANTS)
_REPRO_CLAWS = (
    OptionSet(_CLAWS_OPTIONS)
    .without("mask", "contrast", "shared_encoder")
    .replace("widths", default=[16, 32, 64], demo_default=None)
    .replace("image_size", default=24, demo_default=None, default_doc=None)
)

OPTIONS = {
    "run": OptionSet(_CLAWS_OPTIONS, _LIMITS),
    "reproduce": OptionSet(
        Option("seeds", "int", 3, "seeds per row (mean ± std over them)", low=1),
        Option(
            "variants", "str", list(VARIANTS), "the table's rows", many=True,
            choices=tuple(VARIANTS),
        ),
        _REPRO_CLAWS.values(),
        dataclasses.replace(_LIMITS[0], demo_default=None),
        _LIMITS[1],
    ),
}  # fmt: skip
