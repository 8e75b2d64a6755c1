"""``contrastive-plugins run glcnet`` (pretrain + label-free prediction on a GeoTIFF) and
``contrastive-plugins reproduce glcnet`` (reduced-scale version of the paper's few-label claim)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from torch.utils.data import DataLoader, Dataset

from plugins.errors import UserInputError
from plugins.metrics import effective_rank, spectrum
from plugins.reporting import RunContext
from torchgeo_ext import data as D
from torchgeo_ext.task import GLCNetTask


class _LossRecorder(Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss))


def _fit(
    ctx: RunContext,
    task: Any,
    train: Dataset,
    steps: int,
    batch_size: int,
    val: Dataset | None = None,
) -> list[float]:
    """Train ``task`` for ``steps`` optimiser steps with Lightning; returns the per-step losses."""
    loader = DataLoader(
        train, batch_size=batch_size, shuffle=True, drop_last=len(train) > batch_size
    )
    per_epoch = max(1, len(loader))
    rec = _LossRecorder()
    trainer = Trainer(
        max_steps=steps,
        max_epochs=math.ceil(steps / per_epoch),
        accelerator="gpu" if torch.device(ctx.device).type == "cuda" else "cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=ctx.progress,
        limit_val_batches=1 if val is not None else 0,
        num_sanity_val_steps=0,
        callbacks=[rec],
        default_root_dir=str(ctx.run_dir.path),
    )
    vloader = DataLoader(val, batch_size=batch_size) if val is not None else None
    trainer.fit(task, train_dataloaders=loader, val_dataloaders=vloader)
    return rec.losses


def _save_task(ctx: RunContext, task: Any, name: str, **extra: Any) -> Path:
    return ctx.run_dir.save_checkpoint(
        {"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams), **extra}, name
    )


def _pretrain_glcnet(
    ctx: RunContext, train: Dataset, in_channels: int, rgb: Any, size: int, steps: int, batch: int
) -> tuple[GLCNetTask, list[float]]:
    import warnings

    patch = max(
        3, round(16 * size / 224)
    )  # the paper's 16-px window at 224, scaled to this view size
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", UserWarning
        )  # the task warns about non-paper sizes by design
        task = GLCNetTask(
            backbone=ctx.option("backbone", "resnet18"),
            in_channels=in_channels,
            size=size,
            patch_size=ctx.option("patch_size", patch),
            rgb_bands=rgb,
            lr=ctx.option("lr", 1e-3),
        )
    return task, _fit(ctx, task, train, steps, batch)


def _rgb(x: np.ndarray, bands: list[int]) -> np.ndarray:
    img = x[bands].transpose(1, 2, 0).astype(np.float32)
    return np.clip(img / max(1e-6, np.percentile(img, 99)), 0, 1)


def _plot_views(ctx: RunContext, task: GLCNetTask, batch: torch.Tensor, rgb: list[int]) -> None:
    """Method picture: the two views with their matched windows (same colour = same pair)."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from torchgeo_ext.sampling import match_windows

    p = task.hparams["patch_size"]
    torch.manual_seed(ctx.seed)
    v1, v2, t1, t2 = task.augmentations(batch[:3])
    c1, c2, valid = match_windows(
        t1, t2, tuple(batch.shape[-2:]), v1.shape[-1], p, task.hparams["patch_num"]
    )
    fig, axes = plt.subplots(2, 3, figsize=(8, 5.5))
    for i in range(min(3, v1.shape[0])):
        for row, (v, c) in enumerate([(v1, c1), (v2, c2)]):
            ax = axes[row, i]
            ax.imshow(_rgb(v[i].numpy(), rgb))
            for k in range(c.shape[1]):
                if valid[i, k]:
                    y, x = c[i, k].tolist()
                    ax.add_patch(
                        Rectangle(
                            (x - p // 2 - 0.5, y - p // 2 - 0.5),
                            p,
                            p,
                            fill=False,
                            color=f"C{k}",
                            lw=1.5,
                        )
                    )
            ax.set_axis_off()
            ax.set_title(f"image {i} view {row + 1}", fontsize=8)
    fig.suptitle("GLCNet views and matched local windows")
    ctx.run_dir.save_figure(fig, "matched_windows.png")


@torch.no_grad()
def _global_embeddings(
    task: GLCNetTask, image: torch.Tensor, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Global embeddings (N, 64) of the non-overlapping crops of one image, and each crop's index."""
    task.eval()
    wins = D.grid_windows(image.shape[1], image.shape[2], size, size // 2)
    crops = torch.stack([image[:, r : r + size, c : c + size] for r, c in wins])
    return task.model(crops)[0], torch.arange(len(crops))


def run(ctx: RunContext) -> dict[str, float]:
    """Pretrain GLCNet on one image (embedded Sentinel-2 tile, a GeoTIFF, or rs_seg training scenes),
    then predict a label-free class map (k-means centroids over the dense features) as a GeoTIFF."""
    import rasterio
    from rasterio.transform import from_origin
    from sklearn.cluster import KMeans

    from torchgeo_ext.predict import predict_geotiff

    seed_everything(ctx.seed, verbose=False)
    t0 = time.time()
    out = ctx.run_dir.path
    if ctx.data is None:
        raw, names = D.load_sentinel2_tile()
        rgb = [2, 1, 0]
        src_tif = out / "sentinel2_tile.tif"
        # spyndex's tile has no georeferencing: a nominal 10 m grid, no CRS
        with rasterio.open(
            src_tif,
            "w",
            driver="GTiff",
            width=raw.shape[2],
            height=raw.shape[1],
            count=raw.shape[0],
            dtype="int16",
            transform=from_origin(0, raw.shape[1] * 10, 10, 10),
        ) as dst:
            dst.write(raw)
    elif str(ctx.data).lower().endswith((".tif", ".tiff")):
        src_tif = Path(ctx.data)
        try:
            with rasterio.open(src_tif) as ds:
                raw = ds.read()
        except rasterio.errors.RasterioIOError:
            raise UserInputError(f"{ctx.data} is not a readable GeoTIFF.") from None
        names = [f"band{i + 1}" for i in range(raw.shape[0])]
        rgb = ctx.option("rgb_bands", [0, 1, 2] if raw.shape[0] >= 3 else None)
    else:
        raise UserInputError(
            f"--data must be a GeoTIFF (.tif), got {ctx.data}; for rs_seg use `torchgeo fit --config torchgeo_ext/configs/glcnet_rs_seg_pretrain.yaml`."
        )
    lo, hi = D.band_range(raw)
    image = np.clip(
        (raw.astype(np.float32) - np.asarray(lo, np.float32)[:, None, None])
        / (np.asarray(hi, np.float32) - np.asarray(lo, np.float32))[:, None, None],
        0,
        1,
    )
    size = int(ctx.option("size", 48 if ctx.demo else 64))
    steps = int(ctx.epochs or ctx.option("steps", 6 if ctx.demo else 200))
    batch = int(ctx.option("batch_size", 6 if ctx.demo else 32))
    train = D.ArrayCropDataset(image, min(size + size // 4, *image.shape[1:]), length=steps * batch)
    config = {
        "method": "glcnet",
        "data": str(ctx.data or "spyndex Sentinel-2 tile"),
        "bands": names,
        "size": size,
        "steps": steps,
        "batch_size": batch,
        "seed": ctx.seed,
        "band_min": lo,
        "band_max": hi,
    }
    ctx.run_dir.save_config(config)
    task, losses = _pretrain_glcnet(ctx, train, image.shape[0], rgb, size, steps, batch)
    task.to("cpu").eval()
    ckpt = _save_task(ctx, task, "glcnet.ckpt")
    from torchgeo_ext.export import export_encoder

    export_encoder(ckpt, out / "glcnet_encoder_torchgeo.ckpt")

    side = min(
        256, image.shape[1] // 16 * 16, image.shape[2] // 16 * 16
    )  # DeepLab needs multiples of 16
    img_t = torch.from_numpy(image[:, :side, :side])
    g, _ = _global_embeddings(task, img_t, size)
    with torch.no_grad():
        d = task.model.features(img_t[None])[1][0]  # (64, side, side)
    pix = d.reshape(d.shape[0], -1).T.numpy()
    k = int(ctx.option("clusters", 5))
    rng = np.random.default_rng(ctx.seed)
    km = KMeans(n_clusters=k, n_init=1, random_state=ctx.seed).fit(
        pix[rng.permutation(len(pix))[:5000]]
    )
    seg_ckpt = ctx.run_dir.save_checkpoint(
        {
            "state_dict": task.state_dict(),
            "hyper_parameters": dict(task.hparams),
            "centroids": torch.from_numpy(km.cluster_centers_).float(),
            "band_min": lo,
            "band_max": hi,
        },
        "segmenter.ckpt",
    )
    pred = predict_geotiff(
        seg_ckpt,
        src_tif,
        out / "classmap.tif",
        window=size * 2,
        stride=size * 2 if ctx.demo else size,
        block=512,
    )
    pix_lab = km.predict(pix).reshape(side, side)
    wins = D.grid_windows(side, side, size, size // 2)
    labels = torch.tensor(
        [
            np.bincount(pix_lab[r : r + size, c : c + size].reshape(-1), minlength=k).argmax()
            for r, c in wins
        ]
    )
    ctx.run_dir.plot_loss({"train_loss": losses})
    ctx.run_dir.plot_spectrum({"GLCNet global embedding": spectrum(g)})
    ctx.run_dir.plot_embedding(
        g, labels, title="GLCNet global embeddings of crops (colour: majority k-means class)"
    )
    _plot_views(ctx, task, next(iter(DataLoader(train, batch_size=3)))["image"], rgb or [0, 0, 0])
    fractions = np.asarray(pred["class_pixels"], dtype=np.float64) / max(
        1, sum(pred["class_pixels"])
    )
    metrics = {
        "final_loss": float(np.mean(losses[-3:])),
        "first_loss": float(np.mean(losses[:3])),
        "effective_rank": float(effective_rank(g)),
        "classes_predicted": float((fractions > 0.01).sum()),
        "steps": float(steps),
        "seconds": float(time.time() - t0),
    }
    ctx.run_dir.save_metrics(metrics)
    return metrics


PAPER_CLAIM = (
    "paper (Potsdam, 1% labels): GLCNet about +6% Kappa over its best self-supervised baseline"
)


def _simclr(
    ctx: RunContext, train: Dataset, size: int, steps: int, batch: int
) -> tuple[Any, list[float]]:
    """torchgeo's own SimCLRTask (v1: 2-layer head, no memory bank) on the same backbone and budget."""
    import warnings

    from torchgeo.trainers import SimCLRTask

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        task = SimCLRTask(
            model=ctx.option("backbone", "resnet18"),
            in_channels=3,
            version=1,
            layers=2,
            memory_bank_size=0,
            temperature=0.5,
            lr=0.3 * batch / 256,
            weight_decay=1e-6,
            size=size,
        )
    return task, _fit(ctx, task, train, steps, batch)


def _finetune(
    ctx: RunContext,
    dm: D.RSSegDataModule,
    pretrained: str | None,
    decoder: bool,
    steps: int,
    batch: int,
) -> Any:
    import warnings

    from torchgeo_ext.finetune import GLCNetSegmentationTask

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        task = GLCNetSegmentationTask(
            pretrained=pretrained,
            load_decoder=decoder,
            model="deeplabv3+",
            backbone=ctx.option("backbone", "resnet18"),
            in_channels=3,
            num_classes=6,
            ignore_index=255,
            lr=ctx.option("finetune_lr", 1e-3),
            patience=1000,
        )
    _fit(ctx, task, dm.train_dataset, steps, batch, val=dm.val_dataset)
    return task.model.to(ctx.device).eval()


def _overlay(
    ctx: RunContext, scene: tuple[str, np.ndarray, np.ndarray], preds: dict[str, np.ndarray]
) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    from torchgeo_ext.predict import default_colormap

    rows = list(__import__("csv").DictReader(open(D.rs_seg_root() / "classes.csv")))
    colours = [r.get("mask_rgb_hex", "") for r in rows if r.get("value") != "255"]
    cmap = ListedColormap(colours[:6] if len(colours) >= 6 else default_colormap(6) / 255)
    name, img, mask = scene
    fig, axes = plt.subplots(1, 2 + len(preds), figsize=(3.2 * (2 + len(preds)), 3.4))
    axes[0].imshow(img.transpose(1, 2, 0))
    axes[0].set_title(name, fontsize=8)
    axes[1].imshow(
        np.ma.masked_equal(mask, 255), cmap=cmap, vmin=0, vmax=5, interpolation="nearest"
    )
    axes[1].set_title("truth", fontsize=8)
    for ax, (label, p) in zip(axes[2:], preds.items()):
        ax.imshow(p, cmap=cmap, vmin=0, vmax=5, interpolation="nearest")
        ax.set_title(label, fontsize=8)
    for ax in axes:
        ax.set_axis_off()
    ctx.run_dir.save_figure(fig, f"overlay_{name}.png")


def reproduce(ctx: RunContext) -> dict[str, float]:
    """Few-label fine-tuning on rs_seg (held-out scenes) from random init, torchgeo SimCLR and GLCNet.

    Reduced scale for a shared CPU (options via ``--set``): scenes resized by ``scale`` (0.125), so
    the sliding-window ``window`` (32) and ``stride`` (16) cover the paper's 256/128 window on the
    original scenes; ``source_size`` (32) training windows, ``size`` (32) views; ResNet-18
    DeepLabv3+; ``pretrain_steps`` (200) / ``finetune_steps`` (80) optimiser steps of
    ``batch_size`` (8) for every arm; ``seeds`` (default: ``--seed`` and the next two) repeats
    everything (pretraining, label subsets, fine-tuning) per seed and reports mean ± std.
    """
    from plugins.reporting import markdown_table

    t0 = time.time()
    opt = dict(
        scale=float(ctx.option("scale", 0.125)),
        source_size=int(ctx.option("source_size", 32)),
        size=int(ctx.option("size", 32)),
        window=int(ctx.option("window", 32)),
        stride=int(ctx.option("stride", 16)),
        batch_size=int(ctx.option("batch_size", 8)),
        pretrain_steps=int(ctx.option("pretrain_steps", 200)),
        finetune_steps=int(ctx.option("finetune_steps", 80)),
        fractions=[float(f) for f in ctx.option_list("fractions", [0.01, 0.1])],
    )
    seeds = _seeds(ctx)
    ctx.run_dir.save_config({**opt, "seeds": seeds, "backbone": ctx.option("backbone", "resnet18")})
    per_seed = [_reproduce_seed(ctx, seed, seed == seeds[0], **opt) for seed in seeds]
    ctx.run_dir.save_json(
        dict(zip(map(str, seeds), per_seed, strict=True)), "metrics_per_seed.json"
    )

    metrics: dict[str, float] = {}
    rows = []
    for key in per_seed[0]:
        values = np.array([m[key] for m in per_seed])
        metrics[key] = float(values.mean())
        if len(seeds) > 1:
            metrics[f"{key}_std"] = float(values.std())
    for frac in opt["fractions"]:
        for label in ARMS:
            key = f"{label.split()[0].lower()}_{round(frac * 100)}pct"
            n = int(per_seed[0][f"windows_{round(frac * 100)}pct"])
            row: dict[str, Any] = {"labels": f"{frac:.0%} ({n} windows)", "init": label}
            for m, col in (("oa", "OA"), ("kappa", "Kappa"), ("miou", "mIoU"), ("mf1", "mF1")):
                std = metrics.get(f"{key}_{m}_std")
                row[col] = f"{metrics[f'{key}_{m}']:.4f}" + ("" if std is None else f" ± {std:.4f}")
            rows.append(row)
    wins = sum(
        r["glcnet_1pct_kappa"] > max(r["simclr_1pct_kappa"], r["random_1pct_kappa"])
        for r in per_seed
    )
    metrics["seeds_glcnet_best_at_1pct"] = float(wins)
    ctx.run_dir.save_table(rows, "reproduction.md")
    metrics["seconds"] = time.time() - t0
    ctx.run_dir.save_metrics(metrics)
    print(markdown_table(rows))
    print(f"seeds {seeds}: GLCNet has the best 1% Kappa in {wins} of {len(seeds)}")
    print(PAPER_CLAIM)
    return metrics


ARMS = ("random init", "SimCLR (torchgeo)", "GLCNet")


def _seeds(ctx: RunContext) -> list[int]:
    return [int(v) for v in ctx.option_list("seeds", [ctx.seed + i for i in range(3)])]


def _reproduce_seed(
    ctx: RunContext,
    seed: int,
    first: bool,
    scale: float,
    source_size: int,
    size: int,
    window: int,
    stride: int,
    batch_size: int,
    pretrain_steps: int,
    finetune_steps: int,
    fractions: list[float],
) -> dict[str, float]:
    """One seed of :func:`reproduce`: both pretrainings, then every arm at every label fraction
    (the overlay PNG only for the ``first`` seed)."""
    from torchgeo_ext.evaluate import evaluate_scenes

    seed_everything(seed, verbose=False)
    t0 = time.time()
    root, src, batch = ctx.data, source_size, batch_size
    unlabeled = D.RSSegDataModule(root, patch_size=src, scale=scale, labels=False, val_tiles=())
    unlabeled.setup()
    glc, glc_losses = _pretrain_glcnet(
        ctx, unlabeled.train_dataset, 3, [0, 1, 2], size, pretrain_steps, batch
    )
    glc_ckpt = _save_task(ctx, glc, f"glcnet_seed{seed}.ckpt")
    sim, sim_losses = _simclr(ctx, unlabeled.train_dataset, size, pretrain_steps, batch)
    sim_ckpt = _save_task(ctx, sim, f"simclr_seed{seed}.ckpt")
    ctx.run_dir.plot_loss(
        {"GLCNet": glc_losses, "SimCLR (torchgeo)": sim_losses}, name=f"loss_seed{seed}.png"
    )
    metrics: dict[str, float] = {"pretrain_seconds": time.time() - t0}

    test = D.RSSegDataModule(root, scale=scale).test_scenes()
    overlay = {}
    for frac in fractions:
        dm = D.RSSegDataModule(
            root, patch_size=src, scale=scale, label_fraction=frac, seed=seed, batch_size=batch
        )
        dm.setup()
        for label, ckpt, dec in zip(
            ARMS, [None, str(sim_ckpt), str(glc_ckpt)], [False, False, True]
        ):
            seed_everything(seed, verbose=False)
            model = _finetune(ctx, dm, ckpt, dec, finetune_steps, batch)
            scores, preds = evaluate_scenes(
                model, [(i, m) for _, i, m in test], 6, window, stride, 255, ctx.device
            )
            key = f"{label.split()[0].lower()}_{round(frac * 100)}pct"
            for m in ("oa", "kappa", "miou", "mf1"):
                metrics[f"{key}_{m}"] = scores[m]
            if frac == fractions[-1]:
                overlay[label] = preds[0]
        metrics[f"windows_{round(frac * 100)}pct"] = float(len(dm.train_dataset))
    if first:
        _overlay(ctx, test[0], overlay)
    metrics["seed_seconds"] = time.time() - t0
    return metrics
