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
