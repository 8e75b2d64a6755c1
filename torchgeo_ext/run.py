"""``contrastive-plugins run glcnet`` (pretrain + label-free prediction on a GeoTIFF) and
``contrastive-plugins reproduce glcnet`` (reduced-scale version of the paper's few-label claim)."""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, seed_everything
from torch.utils.data import DataLoader, Dataset, Sampler

from plugins.checkpoint import load_checkpoint
from plugins.engine import fit
from plugins.errors import UserInputError
from plugins.metrics import effective_rank, spectrum
from plugins.reporting import RunContext
from torchgeo_ext import data as D
from torchgeo_ext.options import OUTPUT_STRIDE
from torchgeo_ext.task import GLCNetTask

METHOD = "glcnet"


class _StepSampler(Sampler[int]):
    """Indices ``0..n-1`` in order, starting after the batches the trainer has already done.

    The trainer's ``global_step`` is read when iteration starts, which Lightning does after it has
    restored a checkpoint, so a resumed fit continues with the batches an uninterrupted one would
    have seen next (Lightning restarts plain dataloaders from their first batch)."""

    def __init__(self, n: int, batch_size: int) -> None:
        self.n, self.batch_size = n, batch_size
        self.trainer: Any = None

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        per_epoch = max(1, self.n // self.batch_size)
        done = self.trainer.global_step % per_epoch if self.trainer is not None else 0
        yield from range(min(self.n, done * self.batch_size), self.n)


def _fit(
    ctx: RunContext,
    task: Any,
    train: Dataset,
    steps: int,
    batch_size: int,
    val: Dataset | None = None,
    resumable: bool = False,
    seed: int | None = None,
) -> list[float]:
    """Train ``task`` for ``steps`` optimiser steps with Lightning; returns the per-step losses.

    ``resumable`` (the pretraining of ``run``): ``train`` is read in order (its samples must be
    random already, e.g. :class:`torchgeo_ext.data.ArrayCropDataset`), the global RNG is reseeded per
    step from ``seed``, ``<run>/last.ckpt`` is written as ``--checkpoint-every`` says and ``--resume``
    continues from such a file to the same final parameters as an uninterrupted run.

    Ctrl-C is raised again as ``KeyboardInterrupt`` (:func:`plugins.engine.fit`), so the command
    exits 130 and records the run as interrupted.
    """
    sampler = _StepSampler(len(train), batch_size) if resumable else None
    loader = DataLoader(
        train,
        batch_size=batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        drop_last=len(train) > batch_size,
    )
    per_epoch = max(1, len(loader))
    return fit(
        ctx,
        task,
        train_dataloaders=loader,
        val_dataloaders=DataLoader(val, batch_size=batch_size) if val is not None else None,
        max_steps=steps,
        max_epochs=math.ceil(steps / per_epoch),
        seed=seed if resumable else None,
        callbacks=[_BindSampler(sampler)] if sampler is not None else None,
        val_batches=1 if val is not None else 0,
        resumable=resumable,
    )


class _BindSampler(Callback):
    """Gives :class:`_StepSampler` the trainer, whose restored ``global_step`` it reads."""

    def __init__(self, sampler: _StepSampler) -> None:
        self.sampler = sampler

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self.sampler.trainer = trainer


def _save_task(ctx: RunContext, task: Any, name: str, **extra: Any) -> Path:
    return ctx.run_dir.save_checkpoint(
        {"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams), **extra}, name
    )


def _check_backbone(name: str, timm_too: bool = False) -> str:
    """``name`` if smp (and, with ``timm_too``, timm for torchgeo's SimCLRTask) can build it."""
    import segmentation_models_pytorch as smp
    import timm

    known = smp.encoders.get_encoder_names()
    timm_name = name.removeprefix("tu-").split(".")[0]
    ok = name in known or (name.startswith("tu-") and timm.is_model(timm_name))
    if ok and timm_too:
        ok = timm.is_model(timm_name)
    if not ok:
        raise UserInputError(
            f"--set backbone={name}: expected an smp encoder name such as "
            f"{', '.join(known[:4])} or tu-<timm model> (see "
            "segmentation_models_pytorch.encoders.get_encoder_names())."
        )
    return name


def _multiple_of_stride(key: str, value: int) -> int:
    if value % OUTPUT_STRIDE:
        raise UserInputError(
            f"--set {key}={value}: expected a multiple of {OUTPUT_STRIDE} (DeepLabv3+ output stride)."
        )
    return value


def _glcnet_task(
    ctx: RunContext, in_channels: int, rgb: Any, size: int, backbone: str
) -> GLCNetTask:
    import warnings

    # the paper's 16-px window at 224, scaled to this view size
    patch = ctx.option("patch_size", max(3, round(16 * size / 224)))
    with warnings.catch_warnings():
        # the task warns about non-paper sizes by design
        warnings.simplefilter("ignore", UserWarning)
        return GLCNetTask(
            backbone=backbone,
            in_channels=in_channels,
            size=size,
            patch_size=patch,
            rgb_bands=rgb,
            lr=ctx.option("lr"),
        )


def _pretrain_glcnet(
    ctx: RunContext,
    train: Dataset,
    in_channels: int,
    rgb: Any,
    size: int,
    steps: int,
    batch: int,
    backbone: str,
) -> tuple[GLCNetTask, list[float]]:
    task = _glcnet_task(ctx, in_channels, rgb, size, backbone)
    return task, _fit(ctx, task, train, steps, batch)


def _check_resume(path: str | Path, task: GLCNetTask, steps: int) -> None:
    """One sentence when ``path`` is not a GLCNet training checkpoint that fits this run."""
    ckpt = load_checkpoint(path, METHOD, what="--resume file")
    if not {"state_dict", "optimizer_states", "loops"} <= set(ckpt):
        raise UserInputError(
            f"--resume file {path} is not a Lightning training checkpoint (use the run's last.ckpt)."
        )
    mine, theirs = task.state_dict(), ckpt["state_dict"]
    wrong = sorted(
        k for k in set(mine) | set(theirs) if k not in mine or k not in theirs
        or tuple(mine[k].shape) != tuple(theirs[k].shape)
    )  # fmt: skip
    if wrong:
        raise UserInputError(
            f"--resume file {path} does not fit this run's model ({len(wrong)} weights differ, "
            f"e.g. {wrong[0]}); resume with the same data and --set options."
        )
    hp = ckpt.get("hyper_parameters", {})
    changed = [
        f"{k}={hp[k]!r} there, {v!r} here"
        for k, v in task.hparams.items()
        if k in hp and _plain(hp[k]) != _plain(v)
    ]
    if changed:
        raise UserInputError(
            f"--resume file {path} was written with other settings ({'; '.join(changed)})."
        )
    done = int(ckpt.get("global_step", 0))
    if done > steps:
        raise UserInputError(
            f"--resume file {path} is at step {done}, past this run's {steps} steps; "
            "resume with the same --epochs/--set steps."
        )


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, list | tuple) else value


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


def _write_embedded_tile(raw: np.ndarray, path: Path) -> None:
    import rasterio
    from rasterio.transform import from_origin

    # spyndex's tile has no georeferencing: a nominal 10 m grid, no CRS
    profile = dict(
        driver="GTiff",
        width=raw.shape[2],
        height=raw.shape[1],
        count=raw.shape[0],
        dtype="int16",
        transform=from_origin(0, raw.shape[1] * 10, 10, 10),
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(raw)


def _display_rgb(image: np.ndarray, rgb: list[int] | None, max_side: int = 1024) -> np.ndarray:
    """(H, W, 3) picture of a (C, H, W) image in [0, 1], decimated to at most ``max_side``."""
    f = max(1, int(np.ceil(max(image.shape[1:]) / max_side)))
    return _rgb(image[:, ::f, ::f], rgb if rgb is not None else [0, 0, 0])


def run(ctx: RunContext) -> dict[str, float]:
    """Pretrain GLCNet on GeoTIFFs (``--data``: a file or a folder; default: the embedded
    Sentinel-2 tile), then predict a label-free class map (k-means centroids over the dense
    features) of each file as a GeoTIFF. The data go through
    :class:`torchgeo_ext.geotiff.GeoTiffDataModule` (see :func:`_run_geotiffs`).

    ``--checkpoint-every`` writes ``last.ckpt`` (a Lightning checkpoint) during the pretraining and
    ``--resume`` continues it to the same final parameters as an uninterrupted run."""
    import tempfile

    seed_everything(ctx.seed, verbose=False)
    t0 = time.time()
    size = _multiple_of_stride("size", ctx.option("size"))
    steps = ctx.epochs if ctx.epochs is not None else ctx.option("steps")
    batch = ctx.option("batch_size")
    k = ctx.option("clusters")
    backbone = _check_backbone(ctx.option("backbone"))
    if ctx.data is not None:
        return _run_geotiffs(ctx, Path(ctx.data), size, steps, batch, k, backbone, t0)
    raw, _ = D.load_sentinel2_tile()
    with tempfile.TemporaryDirectory(prefix="glcnet_tile_") as tmp:
        tile = Path(tmp) / "sentinel2_tile.tif"
        _write_embedded_tile(raw, tile)
        return _run_geotiffs(
            ctx, tile, size, steps, batch, k, backbone, t0, rgb_default=[2, 1, 0],
            where="the embedded Sentinel-2 tile", names=["B02", "B03", "B04", "B08"],
        )  # fmt: skip


def _plot_class_map(ctx: RunContext, classmap: Path, picture: np.ndarray, k: int) -> None:
    """``classmap.png``: the input beside its label-free class map, with a legend per cluster
    (nodata pixels white)."""
    from torchgeo_ext.predict import NODATA, read_decimated

    labels = read_decimated(classmap, max(picture.shape[:2]))
    h, w = min(labels.shape[0], picture.shape[0]), min(labels.shape[1], picture.shape[1])
    ctx.run_dir.plot_class_map(
        labels[:h, :w],
        [f"cluster {i}" for i in range(k)],
        name="classmap.png",
        title="label-free class map (k-means on GLCNet dense features)",
        image=picture[:h, :w],
        nodata=NODATA,
    )


def _run_geotiffs(
    ctx: RunContext,
    data: Path,
    size: int,
    steps: int,
    batch: int,
    k: int,
    backbone: str,
    t0: float,
    rgb_default: list[int] | None = None,
    where: str | None = None,
    names: list[str] | None = None,
) -> dict[str, float]:
    """``run glcnet --data PATH`` (a GeoTIFF or a folder of them) through
    :class:`torchgeo_ext.geotiff.GeoTiffDataModule`: torchgeo reads the windows, nodata is
    skipped and left out of the stretch, the k-means of the label-free class map is fitted on
    windows spread over the whole area, and every file gets its class map."""
    from sklearn.cluster import KMeans

    from torchgeo_ext.export import export_encoder
    from torchgeo_ext.geotiff import GeoTiffDataModule, WindowDataset
    from torchgeo_ext.predict import predict_geotiff

    if not data.exists():
        raise UserInputError(
            f"--data {data} does not exist (expected a GeoTIFF or a folder of them)."
        )
    where = where or str(data)

    nodata = ctx.option("nodata")
    dm = GeoTiffDataModule(str(data), bands=ctx.option("bands"), nodata=nodata,
                           patch_size=size, batch_size=batch, seed=ctx.seed)  # fmt: skip
    images = dm.build_dataset()
    n_bands = len(dm.images.band_numbers)
    names = [names[i - 1] for i in dm.images.band_numbers] if names else dm.images.band_names
    if rgb_default is None and n_bands >= 3:
        rgb_default = [0, 1, 2]
    rgb = ctx.option("rgb_bands", rgb_default if n_bands >= 3 else None)
    if rgb is not None and max(rgb) >= n_bands:
        raise UserInputError(
            f"--set rgb_bands={','.join(map(str, rgb))}: {where} has {n_bands} bands "
            f"(indices 0 to {n_bands - 1})."
        )
    x, y, _ = images.bounds
    h, w = round((y.stop - y.start) / images.res[1]), round((x.stop - x.start) / images.res[0])
    if min(h, w) < size:
        raise UserInputError(
            f"{where} is {h}x{w} pixels, smaller than the {size}-pixel view (--set size)."
        )
    dm.patch_size = min(size + size // 4, h, w)  # views are random resized crops of these
    dm.stride = max(1, dm.patch_size // 2)
    dm.setup("fit")  # nodata, NaN and window checks: one sentence before the run folder exists
    train = WindowDataset(dm, steps * batch, seed=ctx.seed)
    task = _glcnet_task(ctx, n_bands, rgb, size, backbone)
    if ctx.resume is not None:
        _check_resume(ctx.resume, task, steps)
    out = ctx.run_dir.ensure()
    if ctx.data is None:  # the embedded tile: keep the input beside its class map
        shutil.copyfile(data, out / data.name)
    ctx.run_dir.save_json(dm.summary, "data_summary.json")
    lo, hi = dm.band_min, dm.band_max
    ctx.run_dir.save_config({
        "method": METHOD, "data": where, "bands": names, "band_numbers": dm.images.band_numbers,
        "nodata": nodata, "backbone": backbone, "size": size, "window": dm.patch_size,
        "patch_size": task.hparams["patch_size"], "lr": task.hparams["lr"], "rgb_bands": rgb,
        "steps": steps, "batch_size": batch, "clusters": k, "seed": ctx.seed,
        "band_min": lo, "band_max": hi,
    })  # fmt: skip
    losses = _fit(ctx, task, train, steps, batch, resumable=True, seed=ctx.seed)
    task.to("cpu").eval()
    ckpt = _save_task(ctx, task, "glcnet.ckpt")
    export_encoder(ckpt, out / "glcnet_encoder_torchgeo.ckpt")

    # k-means on dense features of up to 16 windows spread over the whole area (valid pixels)
    wins = dm.windows["train"]
    picks = [
        wins[i]
        for i in np.unique(np.linspace(0, len(wins) - 1, min(16, len(wins))).round().astype(int))
    ]
    rng = np.random.default_rng(ctx.seed)
    crops, pix, crop_px = [], [], []
    side = size  # a multiple of the output stride, as the network needs
    with torch.no_grad():
        for q in picks:
            img, valid = dm.normalise(dm.dataset[q]["image"])
            img, valid = img[:, :side, :side], valid[:side, :side]
            d = task.model.features(img[None])[1][0].reshape(task.model.dense[0].out_channels, -1)
            v = valid.reshape(-1).numpy()
            feats = d.T.numpy()
            crops.append(img)
            crop_px.append((feats, v))
            idx = np.flatnonzero(v)
            pix.append(feats[rng.permutation(idx)[: max(1, 5000 // len(picks))]])
    km = KMeans(n_clusters=k, n_init=1, random_state=ctx.seed).fit(np.concatenate(pix))
    g = task.model(torch.stack(crops))[0].detach()
    labels = torch.tensor([
        np.bincount(km.predict(f[v]) if v.any() else np.zeros(1, int), minlength=k).argmax()
        for f, v in crop_px
    ])  # fmt: skip
    seg_ckpt = ctx.run_dir.save_checkpoint(
        {"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams),
         "centroids": torch.from_numpy(km.cluster_centers_).float(), "band_min": lo,
         "band_max": hi, "bands": dm.images.band_numbers, "nodata": nodata},
        "segmenter.ckpt",
    )  # fmt: skip
    files = [Path(f) for f in dm.images.source_files]
    class_pixels = np.zeros(k, np.int64)
    nodata_px = 0
    for f in files:
        name = "classmap.tif" if len(files) == 1 else f"classmap_{f.stem}.tif"
        pred = predict_geotiff(seg_ckpt, f, out / name, window=size * 2,
                               stride=size * 2 if ctx.demo else size, block=512, preview=False)  # fmt: skip
        class_pixels += pred["class_pixels"]
        nodata_px += pred["nodata_pixels"]
    first = out / ("classmap.tif" if len(files) == 1 else f"classmap_{files[0].stem}.tif")
    _plot_class_map(ctx, first, _picture(files[0], dm, rgb), k)
    ctx.run_dir.plot_loss({"train_loss": losses})
    ctx.run_dir.plot_spectrum({"GLCNet global embedding": spectrum(g)})
    ctx.run_dir.plot_embedding(
        g, labels, title="GLCNet global embeddings of windows (colour: majority k-means class)",
        class_names=[f"cluster {i}" for i in range(k)],
    )  # fmt: skip
    _plot_views(ctx, task, next(iter(DataLoader(train, batch_size=3)))["image"], rgb or [0, 0, 0])
    fractions = class_pixels / max(1, class_pixels.sum())
    metrics = {
        "final_loss": float(np.mean(losses[-3:])),
        "first_loss": float(np.mean(losses[:3])),
        "effective_rank": float(effective_rank(g)),
        "classes_predicted": float((fractions > 0.01).sum()),
        "nodata_fraction": float(dm.summary["nodata_fraction"]),
        "nodata_pixels_written": float(nodata_px),
        "train_windows": float(len(wins)),
        "steps": float(steps),
        "seconds": float(time.time() - t0),
    }
    ctx.run_dir.save_metrics(metrics)
    return metrics


def _picture(path: Path, dm: Any, rgb: list[int] | None, max_side: int = 1024) -> np.ndarray:
    """(H, W, 3) picture of ``path``'s selected bands, decimated, stretched as in training."""
    import rasterio

    with rasterio.open(path) as ds:
        f = max(1, int(np.ceil(max(ds.height, ds.width) / max_side)))
        raw = ds.read(dm.images.band_numbers, out_shape=(len(dm.images.band_numbers),
                      max(1, -(-ds.height // f)), max(1, -(-ds.width // f)))).astype(np.float32)  # fmt: skip
        nod = dm.images.nodata_value
        if nod is not None and not np.isnan(nod):
            raw[:, (raw == np.float32(nod)).any(0)] = np.nan
    img = dm.normalise(torch.from_numpy(raw))[0].numpy()
    return _display_rgb(img, rgb)


PAPER_CLAIM = (
    "paper (Potsdam, 1% labels): GLCNet about +6% Kappa over its best self-supervised baseline"
)


def _simclr(
    ctx: RunContext, train: Dataset, size: int, steps: int, batch: int, backbone: str
) -> tuple[Any, list[float]]:
    """torchgeo's own SimCLRTask (v1: 2-layer head, no memory bank) on the same backbone and budget."""
    import warnings

    from torchgeo.trainers import SimCLRTask

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        task = SimCLRTask(
            model=backbone,
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
    backbone: str,
) -> Any:
    import warnings

    from torchgeo_ext.finetune import GLCNetSegmentationTask

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        task = GLCNetSegmentationTask(
            pretrained=pretrained,
            load_decoder=decoder,
            model="deeplabv3+",
            backbone=backbone,
            in_channels=3,
            num_classes=6,
            ignore_index=255,
            lr=ctx.option("finetune_lr"),
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

    Reduced scale for a shared CPU: scenes resized by ``scale``, so that the sliding ``window`` and
    ``stride`` cover the paper's 256/128 window on the original scenes; ``source_size`` training
    windows, ``size`` views; DeepLabv3+ on ``backbone``; ``pretrain_steps`` / ``finetune_steps``
    optimiser steps of ``batch_size`` for every arm; ``seeds`` repeats everything (pretraining,
    label subsets, fine-tuning) per seed and reports mean ± std. ``reproduce glcnet --help`` lists
    the defaults (:mod:`torchgeo_ext.options`).
    """
    from plugins.reporting import markdown_table

    if ctx.epochs is not None:
        raise UserInputError(
            "reproduce glcnet has two training budgets; set them with --set pretrain_steps=N "
            "and --set finetune_steps=N instead of --epochs."
        )
    t0 = time.time()
    opt = dict(
        scale=ctx.option("scale"),
        source_size=ctx.option("source_size"),
        size=_multiple_of_stride("size", ctx.option("size")),
        window=_multiple_of_stride("window", ctx.option("window")),
        stride=ctx.option("stride"),
        batch_size=ctx.option("batch_size"),
        pretrain_steps=ctx.option("pretrain_steps"),
        finetune_steps=ctx.option("finetune_steps"),
        fractions=ctx.option("fractions"),
        backbone=_check_backbone(ctx.option("backbone"), timm_too=True),
    )
    if opt["stride"] > opt["window"]:
        raise UserInputError(
            f"--set stride={opt['stride']}: expected at most the window ({opt['window']})."
        )
    if not opt["fractions"]:
        raise UserInputError("--set fractions: expected at least one label fraction.")
    D.rs_seg_root(ctx.data)  # a missing data set is one sentence before any work
    seeds = _seeds(ctx)
    ctx.run_dir.save_config({**opt, "seeds": seeds})
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
    """``--set seeds``, else (declared default none) ``--seed`` and the next two."""
    return [int(v) for v in ctx.option("seeds") or [ctx.seed + i for i in range(3)]]


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
    backbone: str,
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
        ctx, unlabeled.train_dataset, 3, [0, 1, 2], size, pretrain_steps, batch, backbone
    )
    glc_ckpt = _save_task(ctx, glc, f"glcnet_seed{seed}.ckpt")
    sim, sim_losses = _simclr(ctx, unlabeled.train_dataset, size, pretrain_steps, batch, backbone)
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
            model = _finetune(ctx, dm, ckpt, dec, finetune_steps, batch, backbone)
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
