"""``contrastive-plugins run claws`` and ``contrastive-plugins reproduce claws``."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from agri_ext.augment import ClawsViews
from agri_ext.config import CLAWSConfig
from agri_ext.data import load_claws_data
from agri_ext.mask import compute_masks
from agri_ext.model import CLAWS
from agri_ext.train import embed_branch, evaluate_clustering, resize, train_claws
from plugins.data import ImageTensorDataset
from plugins.errors import UserInputError
from plugins.metrics import effective_rank, spectrum
from plugins.reporting import RunContext, RunDir, _pyplot

__all__ = ["run", "reproduce", "VARIANTS", "config_from_options", "plot_mask_grid"]

# The reproduction's five rows (issue 11): baselines and CLAWS variants, as config overrides.
VARIANTS: dict[str, dict] = {
    "SimCLR": dict(contrast="all", mask="none", shared_encoder=True),
    "supervised SimCLR": dict(contrast="supcon", mask="none", shared_encoder=True),
    "CLAWS without mask": dict(contrast="within", mask="none"),
    "CLAWS (pixel mask)": dict(contrast="within", mask="pixel"),
    "CLAWS (feature mask)": dict(contrast="within", mask="feature"),
}

KEYS = ("gmm_nmi", "gmm_ari", "gmm_ami", "gmm_acc", "kmeans_nmi", "masked_gmm_nmi", "crop_gmm_nmi")

# CPU-scale settings used when the user sets nothing (demo on digits, reproduction on crops).
DEMO = dict(epochs=2, widths=(16, 32, 64), image_size=8, batch_size=128)
REPRO = dict(epochs=30, widths=(16, 32, 64), image_size=24, batch_size=128)


def config_from_options(options: dict, base: dict | None = None) -> CLAWSConfig:
    """A :class:`CLAWSConfig` from ``base`` then ``--set key=value`` options (unknown keys rejected)."""
    fields = {f.name for f in dataclasses.fields(CLAWSConfig)}
    values = dict(base or {})
    for key, value in options.items():
        if key in ("seeds", "variants", "train_limit", "test_limit"):
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
    plt = _pyplot()
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
) -> tuple[object, list[float], dict[str, float], torch.Tensor]:
    t0 = time.time()
    model, losses, info = train_claws(
        train_set, cfg, device=ctx.device, seed=seed, progress=ctx.progress
    )
    z = embed_branch(model, test_set.images, cfg.eval_branch)
    scores = evaluate_clustering(z, test_set.labels, seed=seed)
    scores["masked_gmm_nmi"] = _masked_nmi(model, test_set, seed)
    if crop_branch and cfg.eval_branch != "crop":
        zc = embed_branch(model, test_set.images, "crop")
        scores["crop_gmm_nmi"] = evaluate_clustering(zc, test_set.labels, seed, ("gmm",))["gmm_nmi"]
    scores.update(
        effective_rank=effective_rank(z),
        final_loss=losses[-1],
        mask_fallbacks=info["mask_fallbacks"],
        train_seconds=time.time() - t0,
    )
    return model, losses, scores, z


def run(ctx: RunContext) -> dict[str, float]:
    """Train one CLAWS configuration (``--set mask=feature`` etc.), cluster the test embedding with a
    GMM and k-means, and write config, metrics, checkpoint and plots."""
    base = dict(DEMO) if ctx.demo or ctx.data in (None, "digits") else {}
    cfg = config_from_options(ctx.options, base)
    if ctx.epochs:
        cfg.epochs = ctx.epochs
    train_set, test_set, data_name = load_claws_data(ctx.data, size=cfg.image_size, seed=ctx.seed)
    train_set = _limit(train_set, ctx.option("train_limit", 400 if ctx.demo else None), ctx.seed)
    test_set = _limit(test_set, ctx.option("test_limit"), ctx.seed)
    ctx.run_dir.save_config(
        {
            "method": "claws",
            "data": data_name,
            "seed": ctx.seed,
            "device": ctx.device,
            **asdict(cfg),
        }
    )
    model, losses, metrics, z = _train_and_score(
        train_set, test_set, cfg, ctx, ctx.seed, crop_branch=cfg.contrast == "within"
    )
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
    base = dict(REPRO)
    if ctx.epochs:
        base["epochs"] = ctx.epochs
    seeds = [ctx.seed + s for s in range(int(ctx.option("seeds", 3)))]
    names = ctx.option("variants", list(VARIANTS))
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise UserInputError(f"unknown variants {unknown}; choose from {list(VARIANTS)}.")
    train_set, test_set, data_name = load_claws_data(data, size=base["image_size"], seed=ctx.seed)
    configs = {n: config_from_options(ctx.options, {**base, **VARIANTS[n]}) for n in names}
    ctx.run_dir.save_config(
        {
            "method": "claws",
            "data": data_name,
            "seeds": seeds,
            "variants": {n: asdict(c) for n, c in configs.items()},
        }
    )
    plot_mask_grid(ctx.run_dir, train_set, configs[names[0]])
    rows, out, curves, spectra = [], {}, {}, {}
    # context row: the same encoder untrained, so a learned row can be told apart from architecture
    random_scores = []
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
