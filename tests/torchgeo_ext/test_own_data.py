"""Your own GeoTIFFs (issue 21): torchgeo datamodules on georeferenced rasters cut from real rs_seg
scenes (``geotiff_folder`` in conftest: EPSG:32640, 4 bands = RGB + an extra band, a nodata
border, label rasters), nodata everywhere, blended prediction, one-sentence bad input."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from plugins.errors import UserInputError

REPO = Path(__file__).resolve().parents[2]
PRETRAIN = REPO / "torchgeo_ext" / "configs" / "glcnet_geotiff_pretrain.yaml"
FINETUNE = REPO / "torchgeo_ext" / "configs" / "glcnet_geotiff_finetune.yaml"
P = 32  # window side of every test here


def _fit(config: Path, args: list[str], tmp_path: Path) -> None:
    """``torchgeo fit --config CONFIG`` with small CPU settings, then ``args``."""
    from torchgeo.main import main

    cwd = os.getcwd()
    os.chdir(tmp_path)  # anything Lightning writes relative to the working folder stays here
    try:
        main(["fit", "--config", str(config), "--trainer.accelerator", "cpu",
              "--trainer.default_root_dir", str(tmp_path / "logs"),
              "--data.init_args.batch_size", "2", "--data.init_args.patch_size", str(P),
              "--model.init_args.backbone", "resnet18", *args])  # fmt: skip
    finally:
        os.chdir(cwd)


_SMALL_GLCNET = ["--model.init_args.size", "32", "--model.init_args.patch_size", "3"]


def _arrays(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The mosaic as written (4, 160, 192), its labels and the valid-pixel map (no band is 0)."""
    z = np.load(root / "arrays.npz")
    image, label = z["image"], z["label"]
    return image, label, (image != 0).all(0)


def test_torchgeo_fit_pretrains_then_finetunes_on_the_geotiff_folder(geotiff_folder, tmp_path):
    images, labels = geotiff_folder / "images", geotiff_folder / "labels"
    _fit(PRETRAIN, ["--data.init_args.paths", str(images),
          "--trainer.max_steps", "1", "--trainer.max_epochs", "1", *_SMALL_GLCNET], tmp_path)  # fmt: skip
    (ckpt,) = (tmp_path / "logs").rglob("*.ckpt")
    state = torch.load(ckpt, weights_only=True)["GeoTiffDataModule"]
    assert state["bands"] == [1, 2, 3, 4] and len(state["band_min"]) == 4  # for predict
    _fit(FINETUNE, ["--trainer.fast_dev_run", "1",
          "--data.init_args.paths", str(images), "--data.init_args.label_paths", str(labels),
          "--data.init_args.label_fraction", "1.0", "--model.init_args.pretrained", str(ckpt)],
         tmp_path)  # fmt: skip
    # the same fine-tune on three of the four bands: the pretrained weights do not fit
    # jsonargparse wraps errors raised while it builds the model in a ValueError (same sentence)
    with pytest.raises(
        (UserInputError, ValueError), match="trained on 4 bands but this model takes 3"
    ):
        _fit(FINETUNE, ["--trainer.fast_dev_run", "1",
              "--data.init_args.paths", str(images), "--data.init_args.label_paths", str(labels),
              "--data.init_args.bands", "[1, 2, 3]", "--model.init_args.in_channels", "3",
              "--model.init_args.pretrained", str(ckpt)], tmp_path)  # fmt: skip
    # a model whose band count differs from the data's stops at setup, before a step
    with pytest.raises(UserInputError, match="model takes 4 bands .* data has 3"):
        _fit(FINETUNE, ["--trainer.fast_dev_run", "1",
              "--data.init_args.paths", str(images), "--data.init_args.label_paths", str(labels),
              "--data.init_args.bands", "[band1, 2, 3]"], tmp_path)  # fmt: skip


def test_nodata_is_left_out_of_stretch_windows_and_counts(geotiff_folder):
    from torchgeo_ext.geotiff import GeoTiffDataModule

    image, label, valid = _arrays(geotiff_folder)
    dm = GeoTiffDataModule(str(geotiff_folder / "images"), patch_size=P, batch_size=4)
    dm.setup("fit")
    # stretch = per-band 1st/99th percentiles of the valid pixels (all of them: the mosaic is a
    # whole number of windows); with the nodata border included the 1st percentile would be 0
    for b in range(4):
        lo, hi = np.percentile(image[b][valid].astype(np.float64), [1, 99])
        assert dm.band_min[b] == pytest.approx(lo) and dm.band_max[b] == pytest.approx(hi)
        assert np.percentile(image[b], 1) == 0 < lo
    # windows: skipped exactly where more than half of the window is nodata
    frac = 1 - valid.reshape(5, P, 6, P).mean(axis=(1, 3))
    summary = dm.summary["splits"]["train"]
    assert summary["windows_skipped_nodata"] == int((frac > 0.5).sum()) == 5
    assert summary["windows"] == int((frac <= 0.5).sum())
    assert dm.summary["nodata_fraction"] == pytest.approx(1 - valid.mean())
    batch = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert batch["image"].shape == (4, 4, P, P) and 0 <= batch["image"].min()
    assert batch["image"].max() <= 1

    # fine-tuning: class pixels per split (train top 96 rows, val 32, test bottom 32) and the
    # label fraction counted over windows that hold a labelled, valid pixel
    seg = GeoTiffDataModule(
        str(geotiff_folder / "images"), label_paths=str(geotiff_folder / "labels"),
        patch_size=P, label_fraction=0.5, seed=1, batch_size=4,
    )  # fmt: skip
    seg.setup("fit")
    labelled = valid & (label != 255)
    for name, rows in {
        "train": slice(0, 96),
        "val": slice(96, 128),
        "test": slice(128, 160),
    }.items():
        want = np.bincount(label[rows][labelled[rows]], minlength=6)
        assert seg.summary["splits"][name]["class_pixels"] == want.tolist(), name
    per_window = labelled[:96].reshape(3, P, 6, P).any(axis=(1, 3))
    win_frac = 1 - valid[:96].reshape(3, P, 6, P).mean(axis=(1, 3))
    n = int((per_window & (win_frac <= 0.5)).sum())
    assert seg.summary["splits"]["train_windows_with_labels"] == n
    assert seg.summary["splits"]["train"]["windows"] == round(0.5 * n)
    raw = next(iter(seg.train_dataloader()))
    nodata = ~torch.isfinite(raw["image"]).all(1)  # the datasets give NaN at nodata pixels
    batch = seg.on_after_batch_transfer(raw, 0)
    assert nodata.any() and (batch["mask"][nodata] == 255).all()  # nodata is never a class
    assert (batch["image"].permute(0, 2, 3, 1)[nodata] == 0).all()


def test_validation_area_never_overlaps_the_test_area(geotiff_folder):
    import shapely

    from torchgeo_ext.geotiff import GeoTiffDataModule

    kw = dict(label_paths=str(geotiff_folder / "labels"), patch_size=P)
    dm = GeoTiffDataModule(str(geotiff_folder / "images"), **kw)
    dm.setup("fit")
    boxes = {
        k: [shapely.box(q[0].start, q[1].start, q[0].stop, q[1].stop) for q in dm.windows[k]]
        for k in ("train", "val", "test")
    }
    assert all(boxes.values())
    for a, b in [("val", "test"), ("train", "val"), ("train", "test")]:
        assert all(x.intersection(y).area == 0 for x in boxes[a] for y in boxes[b]), (a, b)
    for k, roi in dm.rois.items():
        assert all(roi.buffer(1e-9).covers(x) for x in boxes[k])  # no window reads another split
    x0, y0 = 300000.0, 2800000.0 - 80  # bottom-left of the mosaic (0.5 m pixels)
    with pytest.raises(UserInputError, match="overlaps test_roi"):
        GeoTiffDataModule(str(geotiff_folder / "images"), val_roi=[x0, y0, x0 + 48, y0 + 40],
                          test_roi=[x0 + 32, y0, x0 + 96, y0 + 16], **kw).setup("fit")  # fmt: skip


def _segmenter(tmp_path: Path, in_channels: int = 4) -> Path:
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    m = smp.DeepLabV3Plus(
        encoder_name="resnet18", encoder_weights=None, in_channels=in_channels, classes=6
    )
    hp = {"model": "deeplabv3+", "backbone": "resnet18", "in_channels": in_channels,
          "num_classes": 6}  # fmt: skip
    path = tmp_path / "seg.ckpt"
    torch.save({"hyper_parameters": hp,
                "state_dict": {f"model.{k}": v for k, v in m.state_dict().items()}}, path)  # fmt: skip
    return path


def test_predict_writes_nodata_and_blends_windows(geotiff_folder, tmp_path):
    import rasterio

    from torchgeo_ext.evaluate import sliding_window_logits
    from torchgeo_ext.predict import load_segmenter, predict_geotiff

    src = geotiff_folder / "images" / "scene_1.tif"
    ckpt = _segmenter(tmp_path)
    res = predict_geotiff(ckpt, src, tmp_path / "out.tif", window=P, stride=P // 2, block=4096)
    with rasterio.open(src) as a, rasterio.open(tmp_path / "out.tif") as b:
        raw, out = a.read(), b.read(1)
        assert b.nodata == 255 and b.crs == a.crs and b.transform == a.transform
    nodata = (raw == 0).any(0)
    assert np.array_equal(out == 255, nodata) and res["nodata_pixels"] == int(nodata.sum())
    assert out[~nodata].max() < 6

    # reference: the same network, nodata set to 0 after scaling, linearly blended windows
    model, _ = load_segmenter(ckpt)
    x = torch.from_numpy(raw.astype(np.float32) / 255)
    x[:, torch.from_numpy(nodata)] = 0
    probs = sliding_window_logits(model, x, 6, P, P // 2)
    assert np.array_equal(np.where(nodata, 255, probs.argmax(0).numpy()), out)

    # A pixel on a window edge vs the window centred on it. With window W = 32 and stride 16 on a
    # 64x64 crop, pixel (p, p), p in {16, 32}, lies on the first row/column of the grid windows
    # starting at p, and at the centre (local index 16) of the window starting at p - 16. Blended
    # weights are tent products: w(16) = 15.5/16 in the centre, w(0) = 0.5/16 on the edge, so the
    # blend differs from the centred window's probabilities by at most the share of the other
    # windows' weight, (sum w - w_centre) / sum w (probabilities lie in [0, 1]).
    with rasterio.open(geotiff_folder / "images" / "scene_0.tif") as a:
        crop = torch.from_numpy(a.read()[:, 48:112, 16:80].astype(np.float32) / 255)
    assert (crop > 0).all()  # a 64x64 part of the scene without nodata
    blended = sliding_window_logits(model, crop, 6, P, P // 2)
    plain = sliding_window_logits(model, crop, 6, P, P // 2, blend="mean")
    w_c, w_e = 15.5 / 16, 0.5 / 16
    tol = 1 - w_c**2 / (w_c + w_e) ** 2
    blend_err, mean_err = [], []
    for p in (16, 32):
        with torch.no_grad():
            centred = model(crop[None, :, p - 16 : p + 16, p - 16 : p + 16]).softmax(1)[
                0, :, 16, 16
            ]
        blend_err.append((blended[:, p, p] - centred).abs().max().item())
        mean_err.append((plain[:, p, p] - centred).abs().max().item())
    assert max(blend_err) <= tol + 1e-6, (blend_err, tol)
    assert max(mean_err) > max(blend_err)  # a plain average would let the edge windows show


def test_bad_window_bands_and_areas_are_one_sentence(geotiff_folder, tmp_path):
    from torchgeo_ext.geotiff import GeoTiffDataModule, resolve_bands
    from torchgeo_ext.predict import main

    src = geotiff_folder / "images" / "scene_0.tif"
    # the window is checked before the checkpoint is even opened
    with pytest.raises(UserInputError, match="--window must be a multiple of 16, got 40|"
                       "multiple of 16 .* got 40"):  # fmt: skip
        main(["--checkpoint", str(tmp_path / "missing.ckpt"), str(src), str(tmp_path / "o.tif"),
              "--window", "40"])  # fmt: skip
    with pytest.raises(UserInputError, match="has 3 bands but the checkpoint expects 4"):
        main(["--checkpoint", str(_segmenter(tmp_path)), str(src), str(tmp_path / "o.tif"),
              "--bands", "1,2,3", "--window", "32", "--stride", "16"])  # fmt: skip
    assert not (tmp_path / "o.tif").exists()
    assert resolve_bands(src, [4, "band1"]) == ([4, 1], ["band4", "band1"])
    with pytest.raises(UserInputError, match="5 is not a band .* 1-based, 1 to 4"):
        resolve_bands(src, [5])
    with pytest.raises(
        UserInputError, match=r"'nir' is not a band .*\(band1, band2, band3, band4\)"
    ):
        resolve_bands(src, ["nir"])
    with pytest.raises(UserInputError, match="val_fraction=0.6 and test_fraction=0.5"):
        GeoTiffDataModule(str(src), label_paths=str(geotiff_folder / "labels"), patch_size=P,
                          val_fraction=0.6, test_fraction=0.5).setup("fit")  # fmt: skip
    # a segmentation window the network cannot take stops at setup, before any step
    with pytest.raises(UserInputError, match="patch_size=40: .* multiples of 16"):
        _fit(FINETUNE, ["--trainer.fast_dev_run", "1",
              "--data.init_args.paths", str(geotiff_folder / "images"),
              "--data.init_args.label_paths", str(geotiff_folder / "labels"),
              "--data.init_args.patch_size", "40"], tmp_path)  # fmt: skip


def test_finetune_augmentation_moves_image_and_mask_together():
    """Each sample gets one of the square's 8 symmetries, the same for image and mask."""
    from torchgeo_ext.geotiff import dihedral

    torch.manual_seed(0)
    base = torch.arange(16.0).reshape(4, 4)
    group = {tuple(t.flatten().tolist()) for k in range(4)
             for t in (torch.rot90(base, k), torch.rot90(base, k).flip(-1))}  # fmt: skip
    image = base.expand(64, 2, 4, 4).clone()
    image[:, 1] += 100  # a second band follows the first
    out, mask = dihedral(image, base.long().expand(64, 4, 4).clone())
    seen = {tuple(o.flatten().tolist()) for o in out[:, 0]}
    assert seen == group  # all 8, and nothing else
    assert torch.equal(out[:, 0].long(), mask) and torch.equal(out[:, 1], out[:, 0] + 100)


def test_files_that_declare_different_nodata_are_refused_unless_one_value_is_given(
    geotiff_folder, tmp_path
):
    """One nodata value marks every file: a second file whose own value differs (here 255, where
    the first says 0) would have its 0s read as data, so it is refused; ``nodata=`` settles it."""
    import shutil

    import rasterio

    from torchgeo_ext.geotiff import GeoTiffRaster

    folder = tmp_path / "mixed"
    shutil.copytree(geotiff_folder / "images", folder)
    with rasterio.open(folder / "scene_1.tif", "r+") as ds:
        ds.nodata = 255
    with pytest.raises(UserInputError, match=r"scene_1.tif declares nodata 255.0 but .*scene_0.tif "
                       r"declares 0.0; give one value for all files with nodata="):  # fmt: skip
        GeoTiffRaster(folder)
    assert GeoTiffRaster(folder, nodata=0).nodata_value == 0


def _read_first_pixel(raster) -> float:
    return float(raster[raster.bounds]["image"][0, 0, 0])


def test_rasters_without_a_crs_are_read_on_their_own_grid_also_in_spawned_workers(tmp_path):
    """Rasters without a CRS (plain pixel grids) are indexed through VRT copies with a nominal CRS:
    the pixels come back unwarped, and a spawn-started worker (DataLoader workers on macOS and
    Windows) unpickles the dataset, reads it, and exits without deleting the copies."""
    import multiprocessing as mp

    import rasterio
    from rasterio.transform import from_origin

    from torchgeo_ext.geotiff import GeoTiffRaster

    rng = np.random.default_rng(0)
    pixels = rng.integers(1, 255, (2, 3, 40, 48), dtype=np.uint8)
    for i, arr in enumerate(pixels):
        kw = dict(driver="GTiff", width=48, height=40, count=3, dtype="uint8")
        with rasterio.open(
            tmp_path / f"tile{i}.tif", "w", **kw, transform=from_origin(i * 100, 40, 1, 1)
        ) as ds:
            ds.write(arr)
    raster = GeoTiffRaster(tmp_path)
    assert not raster.has_crs
    sample = raster[raster.bounds]["image"]
    # the first tile's window, pixel for pixel (the second lies 100 px to the east)
    np.testing.assert_array_equal(sample[:, :40, :48].numpy(), pixels[0].astype(np.float32))
    with mp.get_context("spawn").Pool(1) as pool:
        assert pool.apply(_read_first_pixel, (raster,)) == float(pixels[0, 0, 0, 0])
    assert all(Path(f).exists() for f in raster.files)
    assert float(raster[raster.bounds]["image"][0, 0, 0]) == float(pixels[0, 0, 0, 0])

    # a mix of rasters with and without a CRS is one sentence naming the file
    with rasterio.open(tmp_path / "tile0.tif", "r+") as ds:
        ds.crs = "EPSG:32640"
    with pytest.raises(UserInputError, match="has no CRS but other rasters have one") as err:
        GeoTiffRaster(tmp_path)
    assert "tile1.tif" in str(err.value) and len(str(err.value).splitlines()) == 1
