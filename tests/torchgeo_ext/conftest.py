"""Potsdam-layout tiles written with rasterio in a temporary folder (real colour table)."""

from pathlib import Path

import numpy as np
import pytest


def write_tile(
    root: Path, name: str, h: int, w: int, seed: int, bands: int = 4, bad_colour: bool = False
) -> None:
    import rasterio
    from rasterio.transform import from_origin

    from torchgeo_ext.data import potsdam_meta

    _, _, cmap = potsdam_meta()
    rng = np.random.default_rng(seed)
    (root / "4_Ortho_RGBIR").mkdir(parents=True, exist_ok=True)
    labels = np.repeat(np.repeat(rng.integers(0, 6, (h // 8 + 1, w // 8 + 1)), 8, 0), 8, 1)[:h, :w]
    image = (cmap[labels].transpose(2, 0, 1) * 0.6 + rng.integers(0, 60, (3, h, w))).astype(
        np.uint8
    )
    image = np.concatenate([image, rng.integers(0, 255, (bands - 3, h, w), dtype=np.uint8)])
    rgb = cmap[labels].transpose(2, 0, 1).copy()
    if bad_colour:
        rgb[:, :2, :5] = np.array([12, 34, 56], np.uint8)[
            :, None, None
        ]  # 10 pixels outside the table
    kw = dict(
        driver="GTiff",
        width=w,
        height=h,
        dtype="uint8",
        crs="EPSG:32633",
        transform=from_origin(368000, 5808000, 0.05, 0.05),
    )
    with rasterio.open(root / "4_Ortho_RGBIR" / f"{name}_RGBIR.tif", "w", count=bands, **kw) as ds:
        ds.write(image)
    with rasterio.open(root / f"{name}_label.tif", "w", count=3, **kw) as ds:
        ds.write(rgb)


@pytest.fixture
def potsdam_root(tmp_path: Path) -> Path:
    for i, name in enumerate(["top_potsdam_2_10", "top_potsdam_2_11", "top_potsdam_2_12"]):
        write_tile(tmp_path, name, 96, 128, seed=i, bad_colour=i == 0)
    write_tile(tmp_path, "top_potsdam_5_15", 96, 96, seed=9)
    return tmp_path


@pytest.fixture(name="write_tile")
def write_tile_fixture():
    return write_tile


@pytest.fixture
def rs_seg_small(tmp_path: Path) -> Path:
    """A small rs_seg folder in ``tmp_path``: three real scenes of shared/data/rs_seg (a training
    scene, a tile-3 validation scene, a test scene) reduced to 96x80 (area / nearest)."""
    import csv

    from PIL import Image

    from plugins.data import shared_path

    src = shared_path("rs_seg", required=False)
    if src is None:
        pytest.skip("shared/data/rs_seg is not available")
    rows = list(csv.DictReader(open(src / "splits.csv")))
    picks = [
        next(r for r in rows if r["split"] == "train" and r["tile"] == "2"),
        next(r for r in rows if r["split"] == "train" and r["tile"] == "3"),
        next(r for r in rows if r["split"] == "test"),
    ]
    root = tmp_path / "rs_seg"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    size = (96, 80)
    for r in picks:
        Image.open(src / "images" / f"{r['name']}.jpg").convert("RGB").resize(size, Image.BOX).save(
            root / "images" / f"{r['name']}.jpg"
        )
        Image.open(src / "masks" / f"{r['name']}.png").resize(size, Image.NEAREST).save(
            root / "masks" / f"{r['name']}.png"
        )
    with open(root / "splits.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["name", "tile", "split", "width", "height"])
        w.writeheader()
        for r in picks:
            w.writerow({**r, "width": size[0], "height": size[1]})
    (root / "classes.csv").write_text((src / "classes.csv").read_text())
    return root


GEOTIFF_RES = 0.5
GEOTIFF_ORIGIN = (300000.0, 2800000.0)  # UTM 40N (Dubai), top-left corner of the mosaic


@pytest.fixture
def geotiff_folder(tmp_path: Path) -> Path:
    """Two real rs_seg scenes (tiles 2 and 3) reduced to 96x160, written side by side as
    georeferenced GeoTIFFs (EPSG:32640, 0.5 m): 4 uint8 bands (RGB + an extra band, the mean of
    RGB), nodata=0 on an 8-px top/left border of both and on the right 40 px of the second, and
    one-band label rasters (nodata=255).

    Layout: ``images/scene_{0,1}.tif``, ``labels/scene_{0,1}.tif``; ``arrays.npz`` holds the
    mosaic (4, 160, 192) and its labels (160, 192) as written, for reference computations."""
    import csv

    import rasterio
    from PIL import Image
    from rasterio.transform import from_origin

    from plugins.data import shared_path

    src = shared_path("rs_seg", required=False)
    if src is None:
        pytest.skip("shared/data/rs_seg is not available")
    rows = list(csv.DictReader(open(src / "splits.csv")))
    names = [next(r["name"] for r in rows if r["tile"] == t) for t in ("2", "3")]
    root = tmp_path / "geotiffs"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    h, w = 160, 96
    images, labels = [], []
    for i, name in enumerate(names):
        rgb = np.asarray(
            Image.open(src / "images" / f"{name}.jpg").convert("RGB").resize((w, h), Image.BOX)
        )
        lab = np.asarray(
            Image.open(src / "masks" / f"{name}.png").resize((w, h), Image.NEAREST)
        ).copy()
        rgb = np.clip(rgb.transpose(2, 0, 1), 1, 255).astype(np.uint8)  # 0 is reserved for nodata
        img = np.concatenate([rgb, rgb.mean(0, keepdims=True).astype(np.uint8)])
        img[:, :8, :] = 0
        img[:, :, :8] = 0
        if i == 1:
            img[:, :, w - 40 :] = 0
        lab[img[0] == 0] = 255
        kw = dict(driver="GTiff", width=w, height=h, crs="EPSG:32640", photometric="minisblack",
                  transform=from_origin(GEOTIFF_ORIGIN[0] + i * w * GEOTIFF_RES, GEOTIFF_ORIGIN[1],
                                        GEOTIFF_RES, GEOTIFF_RES))  # fmt: skip
        with rasterio.open(
            root / "images" / f"scene_{i}.tif", "w", count=4, dtype="uint8", nodata=0, **kw
        ) as ds:
            ds.write(img)
        with rasterio.open(
            root / "labels" / f"scene_{i}.tif", "w", count=1, dtype="uint8", nodata=255, **kw
        ) as ds:
            ds.write(lab[None])
        images.append(img)
        labels.append(lab)
    np.savez(root / "arrays.npz", image=np.concatenate(images, 2), label=np.concatenate(labels, 1))
    return root
