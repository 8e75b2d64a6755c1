"""``contrastive-plugins predict glcnet --checkpoint CKPT IN.tif OUT.tif``: class map of a GeoTIFF.

Reads the raster block by block (``--block`` pixels plus a half-window halo, boundless windowed
reads), runs the sliding-window evaluator on each block and writes the block's centre, so memory
stays bounded whatever the raster size. The output is a single-band uint8 GeoTIFF with the input's
CRS and transform, plus a colour PNG preview with a legend next to it; both are written under
temporary names and renamed on success, so a failed prediction leaves no output. NaN/inf pixels
that the input does not declare as nodata are refused with the file and their count.

Checkpoints: a fine-tuned segmentation checkpoint (torchgeo ``SemanticSegmentationTask`` /
:class:`GLCNetSegmentationTask` ``.ckpt``, or the ``segmenter.ckpt`` a run writes), or a GLCNet
run's ``segmenter.ckpt`` holding a nearest-centroid head over the dense features (label-free demo).
Input scaling: ``band_min``/``band_max`` stored in the checkpoint, else the integer dtype's range.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from plugins.checkpoint import load_checkpoint
from plugins.errors import UserInputError
from torchgeo_ext.evaluate import sliding_window_logits
from torchgeo_ext.options import OUTPUT_STRIDE

NODATA = 255
"""The class map's nodata value (uint8): input pixels that are nodata in any band."""


class CentroidSegmenter(nn.Module):
    """GLCNet dense map D -> nearest of K centroids, as a linear 1x1 layer:
    ``argmin_k |d - c_k|^2 = argmax_k (2 c_k . d - |c_k|^2)``."""

    def __init__(self, glcnet: nn.Module, centroids: torch.Tensor):
        super().__init__()
        self.glcnet = glcnet
        k, c = centroids.shape
        self.head = nn.Conv2d(c, k, 1)
        with torch.no_grad():
            self.head.weight.copy_(2 * centroids[:, :, None, None])
            self.head.bias.copy_(-(centroids**2).sum(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.glcnet.features(x)[1])


def load_segmenter(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Model mapping (B, C, H, W) in [0, 1] to (B, K, H, W) logits, and its metadata.

    The file is read with :func:`plugins.checkpoint.load_checkpoint` (tensors and plain containers
    only, never arbitrary pickled objects); a missing, corrupt or foreign file is one sentence."""
    import segmentation_models_pytorch as smp

    ckpt = load_checkpoint(path, what="checkpoint")
    hp, state = ckpt.get("hyper_parameters"), ckpt.get("state_dict")
    if not isinstance(hp, dict) or not isinstance(state, dict):
        raise UserInputError(
            f"checkpoint {path} is not a segmentation checkpoint (needs hyper_parameters and state_dict)."
        )
    hp, state = (
        dict(hp),
        {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")},
    )
    try:
        if "centroids" in ckpt:
            from torchgeo_ext.model import GLCNetModel

            glc = GLCNetModel(
                hp.get("model", "deeplabv3+"),
                hp["backbone"],
                hp["in_channels"],
                use_variance=hp.get("use_variance", True),
            )
            glc.load_state_dict(state)
            model: nn.Module = CentroidSegmenter(glc, ckpt["centroids"].float())
            hp["num_classes"] = int(ckpt["centroids"].shape[0])
        else:
            if hp.get("model") != "deeplabv3+" or not hp.get("num_classes"):
                raise UserInputError(
                    f"checkpoint {path} is not a deeplabv3+ segmentation checkpoint with num_classes."
                )
            model = smp.DeepLabV3Plus(
                encoder_name=hp["backbone"],
                encoder_weights=None,
                in_channels=hp["in_channels"],
                classes=hp["num_classes"],
            )
            model.load_state_dict(state)
    except (KeyError, RuntimeError, ValueError, TypeError, AttributeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserInputError(
            f"checkpoint {path} does not hold a model this command can build ({first[:150]})."
        ) from None
    # a Lightning checkpoint written with GeoTiffDataModule holds its state (bands, stretch)
    data_state = next(
        (v for v in ckpt.values() if isinstance(v, dict) and "band_min" in v and "bands" in v), {}
    )
    meta = {
        k: ckpt.get(k, hp.get(k, data_state.get(k)))
        for k in ("band_min", "band_max", "classes", "colormap", "bands", "nodata")
    }
    meta.update(in_channels=hp["in_channels"], num_classes=hp["num_classes"])
    if "centroids" in ckpt and not meta.get("classes"):
        meta["classes"] = [f"cluster {i}" for i in range(hp["num_classes"])]
    return model.eval(), meta


def scale_bands(block: np.ndarray, meta: dict[str, Any]) -> torch.Tensor:
    """(C, H, W) raster values -> float32 in [0, 1] by the checkpoint's band range or the dtype's."""
    x = block.astype(np.float32)
    if meta.get("band_min") is not None:
        lo = np.asarray(meta["band_min"], np.float32)[:, None, None]
        hi = np.asarray(meta["band_max"], np.float32)[:, None, None]
        x = (x - lo) / np.maximum(hi - lo, 1e-6)
    elif np.issubdtype(block.dtype, np.integer):
        x = x / float(np.iinfo(block.dtype).max)
    return torch.from_numpy(np.clip(x, 0, 1))


def default_colormap(k: int) -> np.ndarray:
    import matplotlib

    return (np.asarray(matplotlib.colormaps["tab10"].colors)[np.arange(k) % 10] * 255).astype(
        np.uint8
    )


def check_window(window: int, stride: int) -> None:
    """One sentence for a window the network cannot take or a stride outside 1..window."""
    if window < OUTPUT_STRIDE or window % OUTPUT_STRIDE:
        raise UserInputError(
            f"--window must be a multiple of {OUTPUT_STRIDE} (DeepLabv3+ output stride), got {window}."
        )
    if not 1 <= stride <= window:
        raise UserInputError(f"--stride must be in 1..--window ({window}), got {stride}.")


def predict_geotiff(
    checkpoint: str | Path,
    src: str | Path,
    dst: str | Path,
    window: int = 256,
    stride: int = 128,
    block: int = 1024,
    device: str | torch.device = "cpu",
    preview: bool = True,
    bands: list[int | str] | None = None,
    nodata: float | None = None,
) -> dict[str, Any]:
    """Write the class map of ``src`` to ``dst`` (GeoTIFF) and, with ``preview``, ``dst`` with
    ``.png`` (the map with a legend per class).

    ``bands``: 1-based numbers or names (default: the checkpoint's, else all). nodata pixels (the
    file's nodata, or ``nodata``, or the checkpoint's) in any selected band are written as the
    output's nodata value (255) and fed to the network as 0. Overlapping windows are blended with
    :func:`torchgeo_ext.evaluate.blend_weights` (linear), so window edges leave no seams.

    Both files are written under temporary names in ``dst``'s folder and renamed when complete,
    so a failure (a corrupt block, NaN pixels) leaves no output. NaN/inf pixels that the file
    does not declare as nodata are counted over the whole raster and refused in one sentence."""
    import rasterio

    from torchgeo_ext.data import raise_nonfinite
    from torchgeo_ext.geotiff import resolve_bands

    check_window(window, stride)
    dst = Path(dst)
    if dst.resolve() == Path(src).resolve():
        raise UserInputError(f"output {dst} is the input; choose another output path.")
    model, meta = load_segmenter(checkpoint)
    model.to(device)
    try:
        numbers, names = resolve_bands(src, bands if bands else meta.get("bands"))
        ds = rasterio.open(src)
    except rasterio.errors.RasterioIOError:
        raise UserInputError(f"{src} is not a readable GeoTIFF.") from None
    if len(numbers) != meta["in_channels"]:
        ds.close()
        raise UserInputError(
            f"{src} has {len(numbers)} bands but the checkpoint expects {meta['in_channels']} "
            f"(bands read: {', '.join(names)}); choose {meta['in_channels']} with --bands."
        )
    meta["bands"] = numbers
    meta["nodata"] = nodata if nodata is not None else meta.get("nodata")
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with ds:
            counts = _predict_blocks(ds, src, tmp, model, meta, window, stride, block, device)
            bad = counts.pop("nonfinite")
        raise_nonfinite(src, bad)
        png = None
        if preview:
            png = dst.with_suffix(".png")
            save_preview(tmp, meta, out=png)
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()
    return {
        "output": str(dst),
        "preview": str(png) if png else None,
        "class_pixels": counts["class_pixels"],
        "nodata_pixels": counts["nodata_pixels"],
        "bands": meta["bands"],
    }


def _predict_blocks(
    ds: Any,
    src: str | Path,
    out_path: Path,
    model: nn.Module,
    meta: dict[str, Any],
    window: int,
    stride: int,
    block: int,
    device: str | torch.device,
) -> dict[str, Any]:
    """Block-by-block prediction of open raster ``ds`` into ``out_path``; after the first block
    with NaN/inf pixels the model is no longer run, the rest is only read to count them."""
    import rasterio
    from rasterio.windows import Window

    from torchgeo_ext.data import nonfinite_counts

    numbers = meta.get("bands") or list(range(1, ds.count + 1))
    if len(numbers) != meta["in_channels"]:
        raise UserInputError(
            f"{src} has {len(numbers)} bands but the checkpoint expects {meta['in_channels']}."
        )
    override = meta.get("nodata")
    profile = ds.profile.copy()
    profile.update(driver="GTiff", count=1, dtype="uint8", nodata=NODATA, compress="deflate")
    profile.pop("photometric", None)
    if ds.width >= 256 and ds.height >= 256:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    else:
        for key in ("tiled", "blockxsize", "blockysize"):
            profile.pop(key, None)
    halo = window // 2
    counts = np.zeros(meta["num_classes"], np.int64)
    bad = np.zeros(3, np.int64)
    nodata_px = 0
    with rasterio.open(out_path, "w", **profile) as out:
        for r in range(0, ds.height, block):
            for c in range(0, ds.width, block):
                h, w = min(block, ds.height - r), min(block, ds.width - c)
                r0, c0 = max(0, r - halo), max(0, c - halo)
                r1, c1 = min(ds.height, r + h + halo), min(ds.width, c + w + halo)
                try:
                    data = ds.read(numbers, window=Window(c0, r0, c1 - c0, r1 - r0))
                except rasterio.errors.RasterioIOError:
                    raise UserInputError(
                        f"{src} is corrupt: reading rows {r0}-{r1} failed."
                    ) from None
                centre = data[:, r - r0 : r - r0 + h, c - c0 : c - c0 + w]
                values, pixels, _ = nonfinite_counts(centre, ds.nodata)
                bad += (values, pixels, 0)  # declared nodata (NaN included) is handled below
                if bad.any():
                    continue  # the run fails; only count what is left
                invalid = nodata_mask(data, override if override is not None else ds.nodata)
                x = scale_bands(np.where(invalid, 0, data), meta)
                x[:, torch.from_numpy(invalid)] = 0
                prob = sliding_window_logits(
                    model, x.to(device), meta["num_classes"], window, stride
                )
                pred = prob.argmax(0)[r - r0 : r - r0 + h, c - c0 : c - c0 + w].cpu().numpy()
                pred = pred.astype(np.uint8)
                hole = invalid[r - r0 : r - r0 + h, c - c0 : c - c0 + w]
                pred[hole] = NODATA
                nodata_px += int(hole.sum())
                counts += np.bincount(pred[~hole].reshape(-1), minlength=meta["num_classes"])
                out.write(pred, 1, window=Window(c, r, w, h))
    return {
        "class_pixels": counts.tolist(),
        "nodata_pixels": nodata_px,
        "nonfinite": tuple(int(v) for v in bad),
    }


def nodata_mask(data: np.ndarray, nodata: float | None = None) -> np.ndarray:
    """(H, W) True where any band of a (C, H, W) block is nodata: equal to ``nodata`` or NaN.

    Only the nodata value decides, never an alpha band (GDAL reads the 4th band of an RGB-like
    uint8 file as alpha, which for RGB+IR imagery is the infrared band)."""
    invalid = np.zeros(data.shape[1:], bool)
    if np.issubdtype(data.dtype, np.floating):
        invalid |= np.isnan(data).any(0)
    if nodata is not None and not np.isnan(nodata):
        invalid |= (data == np.asarray(nodata).astype(data.dtype)).any(0)
    return invalid


def read_decimated(path: str | Path, max_side: int = 1024) -> np.ndarray:
    """Band 1 of a raster, decimated on read (nearest) so that its longer side is at most
    ``max_side``: memory stays bounded whatever the raster size."""
    import rasterio

    with rasterio.open(path) as ds:
        f = max(1, int(np.ceil(max(ds.height, ds.width) / max_side)))
        return ds.read(
            1,
            out_shape=(max(1, -(-ds.height // f)), max(1, -(-ds.width // f))),
            resampling=rasterio.enums.Resampling.nearest,
        )


def save_preview(
    path: str | Path, meta: dict[str, Any], max_side: int = 1024, out: str | Path | None = None
) -> Path:
    """PNG of a class-map GeoTIFF with a legend naming each class (``meta["classes"]``, else
    ``class i``), written atomically to ``out`` (default: ``path`` with ``.png``)."""
    from plugins.reporting import atomic_write_bytes, class_map_figure

    labels = read_decimated(path, max_side)
    k = meta["num_classes"]
    names = list(meta.get("classes") or [])
    names = [str(n) for n in names[:k]] + [f"class {i}" for i in range(len(names), k)]
    has_nodata = bool((labels == NODATA).any())  # a "nodata" legend entry only when there is some
    fig = class_map_figure(
        labels, names, title=Path(out or path).stem, nodata=NODATA if has_nodata else None
    )
    out = Path(out) if out is not None else Path(path).with_suffix(".png")
    try:
        atomic_write_bytes(
            out, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        )
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return out


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit status 2), like the ``contrastive-plugins`` command."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        print(f"{self.prog}: error: {message} (see {self.prog} --help).", file=sys.stderr)
        raise SystemExit(2)


def _int_at_least(low: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="contrastive-plugins predict glcnet", description=__doc__.splitlines()[0])
    p.add_argument(
        "--checkpoint",
        required=True,
        help="segmentation checkpoint (.ckpt): a fine-tuned deeplabv3+ (torchgeo "
        "SemanticSegmentationTask / GLCNetSegmentationTask) or a 'run glcnet' segmenter.ckpt",
    )
    p.add_argument("input", help="input GeoTIFF with the checkpoint's band count")
    p.add_argument(
        "output",
        help="output class-map GeoTIFF (uint8, the input's CRS and transform); a .png preview "
        "with a legend is written beside it; both appear only when prediction succeeds",
    )
    p.add_argument(
        "--window",
        type=_int_at_least(16),
        default=256,
        help="sliding-window side in pixels, a multiple of 16 (default 256, the paper's)",
    )
    p.add_argument(
        "--stride",
        type=_int_at_least(1),
        default=128,
        help="step between sliding windows, 1 to --window; overlapping windows are blended "
        "with a linear weight, highest at each window's centre (default 128, the paper's)",
    )
    p.add_argument(
        "--block",
        type=_int_at_least(1),
        default=1024,
        help="pixels per read block (plus a half-window halo); bounds memory (default 1024)",
    )
    p.add_argument(
        "--bands",
        default=None,
        help="bands to read, comma-separated 1-based numbers or band names, e.g. 1,2,3 or "
        "red,green,blue (default: the checkpoint's bands, else all)",
    )
    p.add_argument(
        "--nodata",
        type=float,
        default=None,
        help="nodata value for inputs that declare none (default: the file's, else the "
        "checkpoint's); nodata pixels are written as 255",
    )
    p.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cpu, cuda or cuda:N (default: cuda when available)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_window(args.window, args.stride)
    device = _device(args.device)
    bands = [b for b in args.bands.split(",") if b.strip()] if args.bands else None
    res = predict_geotiff(
        args.checkpoint,
        args.input,
        args.output,
        args.window,
        args.stride,
        args.block,
        device,
        bands=bands,
        nodata=args.nodata,
    )
    print(
        f"wrote {res['output']} and {res['preview']}; bands {res['bands']}; pixels per class: "
        f"{res['class_pixels']}; nodata pixels: {res['nodata_pixels']}"
    )
    return 0


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserInputError(f"--device {name}: expected cpu, cuda or cuda:N.") from None
    if device.type not in ("cpu", "cuda"):
        raise UserInputError(f"--device {name}: expected cpu, cuda or cuda:N.")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserInputError(f"--device {name}: CUDA is not available on this machine.")
    return device


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except UserInputError as err:
        print(f"contrastive-plugins predict glcnet: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
