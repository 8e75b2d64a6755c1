"""``contrastive-plugins predict glcnet --checkpoint CKPT IN.tif OUT.tif``: class map of a GeoTIFF.

Reads the raster block by block (``--block`` pixels plus a half-window halo, boundless windowed
reads), runs the sliding-window evaluator on each block and writes the block's centre, so memory
stays bounded whatever the raster size. The output is a single-band uint8 GeoTIFF with the input's
CRS and transform, plus a colour PNG preview next to it.

Checkpoints: a fine-tuned segmentation checkpoint (torchgeo ``SemanticSegmentationTask`` /
:class:`GLCNetSegmentationTask` ``.ckpt``, or the ``segmenter.ckpt`` a run writes), or a GLCNet
run's ``segmenter.ckpt`` holding a nearest-centroid head over the dense features (label-free demo).
Input scaling: ``band_min``/``band_max`` stored in the checkpoint, else the integer dtype's range.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from plugins.errors import UserInputError
from torchgeo_ext.evaluate import sliding_window_logits


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
    """Model mapping (B, C, H, W) in [0, 1] to (B, K, H, W) logits, and its metadata."""
    import segmentation_models_pytorch as smp

    path = Path(path)
    if not path.exists():
        raise UserInputError(f"checkpoint {path} does not exist.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        hp, state = dict(ckpt["hyper_parameters"]), dict(ckpt["state_dict"])
    except Exception:
        raise UserInputError(
            f"checkpoint {path} is not a segmentation checkpoint (needs hyper_parameters and state_dict)."
        ) from None
    if "centroids" in ckpt:
        from torchgeo_ext.model import GLCNetModel

        glc = GLCNetModel(
            hp.get("model", "deeplabv3+"),
            hp["backbone"],
            hp["in_channels"],
            use_variance=hp.get("use_variance", True),
        )
        glc.load_state_dict(
            {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
        )
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
        model.load_state_dict(
            {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
        )
    meta = {k: ckpt.get(k, hp.get(k)) for k in ("band_min", "band_max", "classes", "colormap")}
    meta.update(in_channels=hp["in_channels"], num_classes=hp["num_classes"])
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


def predict_geotiff(
    checkpoint: str | Path,
    src: str | Path,
    dst: str | Path,
    window: int = 256,
    stride: int = 128,
    block: int = 1024,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Write the class map of ``src`` to ``dst`` (GeoTIFF) and ``dst`` with ``.png`` (preview)."""
    import rasterio
    from rasterio.windows import Window

    model, meta = load_segmenter(checkpoint)
    model.to(device)
    try:
        ds = rasterio.open(src)
    except rasterio.errors.RasterioIOError:
        raise UserInputError(f"{src} is not a readable GeoTIFF.") from None
    with ds:
        if ds.count != meta["in_channels"]:
            raise UserInputError(
                f"{src} has {ds.count} bands but the checkpoint expects {meta['in_channels']}."
            )
        profile = ds.profile.copy()
        profile.update(driver="GTiff", count=1, dtype="uint8", nodata=None, compress="deflate")
        if ds.width >= 256 and ds.height >= 256:
            profile.update(tiled=True, blockxsize=256, blockysize=256)
        else:
            (
                profile.pop("tiled", None),
                profile.pop("blockxsize", None),
                profile.pop("blockysize", None),
            )
        halo = window // 2
        counts = np.zeros(meta["num_classes"], np.int64)
        Path(dst).parent.mkdir(parents=True, exist_ok=True)
        with rasterio.open(dst, "w", **profile) as out:
            for r in range(0, ds.height, block):
                for c in range(0, ds.width, block):
                    h, w = min(block, ds.height - r), min(block, ds.width - c)
                    r0, c0 = max(0, r - halo), max(0, c - halo)
                    r1, c1 = min(ds.height, r + h + halo), min(ds.width, c + w + halo)
                    try:
                        data = ds.read(window=Window(c0, r0, c1 - c0, r1 - r0))
                    except rasterio.errors.RasterioIOError:
                        raise UserInputError(
                            f"{src} is corrupt: reading rows {r0}-{r1} failed."
                        ) from None
                    x = scale_bands(data, meta).to(device)
                    pred = sliding_window_logits(
                        model, x, meta["num_classes"], window, stride
                    ).argmax(0)
                    pred = (
                        pred[r - r0 : r - r0 + h, c - c0 : c - c0 + w]
                        .cpu()
                        .numpy()
                        .astype(np.uint8)
                    )
                    counts += np.bincount(pred.reshape(-1), minlength=meta["num_classes"])
                    out.write(pred, 1, window=Window(c, r, w, h))
    preview = save_preview(dst, meta)
    return {"output": str(dst), "preview": str(preview), "class_pixels": counts.tolist()}


def save_preview(path: str | Path, meta: dict[str, Any], max_side: int = 1024) -> Path:
    """Colour PNG of a class-map GeoTIFF, decimated on read so memory stays bounded."""
    import rasterio
    from PIL import Image

    with rasterio.open(path) as ds:
        f = max(1, int(np.ceil(max(ds.height, ds.width) / max_side)))
        labels = ds.read(
            1,
            out_shape=(max(1, ds.height // f), max(1, ds.width // f)),
            resampling=rasterio.enums.Resampling.nearest,
        )
    cmap = np.asarray(meta.get("colormap") or default_colormap(meta["num_classes"]), np.uint8)
    rgb = cmap[np.minimum(labels, len(cmap) - 1)]
    out = Path(path).with_suffix(".png")
    Image.fromarray(rgb).save(out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="contrastive-plugins predict glcnet", description=__doc__.splitlines()[0]
    )
    p.add_argument("--checkpoint", required=True, help="segmentation checkpoint (.ckpt)")
    p.add_argument("input", help="input GeoTIFF")
    p.add_argument("output", help="output class-map GeoTIFF (a .png preview is written beside it)")
    p.add_argument("--window", type=int, default=256)
    p.add_argument("--stride", type=int, default=128)
    p.add_argument("--block", type=int, default=1024, help="pixels per read block (bounds memory)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    if args.stride <= 0 or args.stride > args.window:
        raise UserInputError(f"--stride must be in 1..--window ({args.window}), got {args.stride}.")
    res = predict_geotiff(
        args.checkpoint, args.input, args.output, args.window, args.stride, args.block, args.device
    )
    print(f"wrote {res['output']} and {res['preview']}; pixels per class: {res['class_pixels']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
