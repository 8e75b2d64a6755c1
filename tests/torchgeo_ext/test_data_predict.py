"""Datamodules, sliding-window evaluation and GeoTIFF prediction, including bad input."""

import csv

import numpy as np
import pytest
import torch
from torch import nn

from plugins.data import shared_path
from plugins.errors import UserInputError
from torchgeo_ext.data import PotsdamPatchDataModule, grid_windows, label_subset, rgb_to_index
from torchgeo_ext.evaluate import evaluate_scenes, sliding_window_logits


def test_potsdam_datamodule_patches_subsets_and_unknown_colours(potsdam_root):
    dm = PotsdamPatchDataModule(str(potsdam_root), patch_size=32, val_tiles=1, batch_size=4)
    dm.setup()
    assert len(dm.train_dataset) == 2 * (96 // 32) * (128 // 32)  # two fit tiles, 12 patches each
    assert len(dm.val_dataset) == 12  # the held-out training tile, never a test tile
    assert [p[0].name for p in dm.test_files] == ["top_potsdam_5_15_RGBIR.tif"]
    assert (dm.train_dataset.windows[:12, 0] == 0).all()
    with pytest.warns(UserWarning, match="outside the Potsdam table"):
        masks = torch.stack([dm.train_dataset[i]["mask"] for i in range(12)])
    assert (masks == 255).sum() == 10  # the 10 off-table pixels of tile 0 are ignored, not clutter
    assert dm.train_dataset.read.unknown_pixels == 10
    sample = dm.train_dataset[20]
    assert (
        sample["image"].shape == (4, 32, 32)
        and 0 <= sample["image"].min()
        and sample["image"].max() <= 1
    )
    few = PotsdamPatchDataModule(
        str(potsdam_root), patch_size=32, val_tiles=1, label_fraction=0.1, seed=3
    )
    few.setup()
    assert len(few.train_dataset) == round(0.1 * 24)
    assert np.array_equal(label_subset(24, 0.1, 3), label_subset(24, 0.1, 3))


def test_rgb_to_index_against_loop():
    from torchgeo_ext.data import potsdam_meta

    _, _, cmap = potsdam_meta()
    rng = np.random.default_rng(0)
    rgb = cmap[rng.integers(0, 6, (5, 7))].transpose(2, 0, 1).copy()
    rgb[:, 0, 0] = (1, 2, 3)
    out, unknown = rgb_to_index(rgb, cmap)
    for i in range(5):
        for j in range(7):
            hits = [k for k, c in enumerate(cmap) if tuple(c) == tuple(rgb[:, i, j])]
            assert out[i, j] == (hits[0] if hits else 255)
    assert unknown == 1


def test_potsdam_bad_tiles(tmp_path, write_tile):
    write_tile(tmp_path / "small", "top_potsdam_2_10", 20, 20, seed=0)
    with pytest.raises(UserInputError, match="smaller than"):
        PotsdamPatchDataModule(str(tmp_path / "small"), patch_size=32, val_tiles=0).setup()
    write_tile(tmp_path / "rgb", "top_potsdam_2_10", 64, 64, seed=0, bands=3)
    with pytest.raises(UserInputError, match="3 bands"):
        PotsdamPatchDataModule(str(tmp_path / "rgb"), patch_size=32, val_tiles=0).setup()
    with pytest.raises(UserInputError, match="no Potsdam"):
        PotsdamPatchDataModule(str(tmp_path / "missing")).setup()


def test_rs_seg_grid_matches_listed_windows():
    root = shared_path("rs_seg", required=False)
    if root is None:
        pytest.skip("shared/data/rs_seg is not available")
    listed = {
        (r["name"], int(r["y"]), int(r["x"]))
        for r in csv.DictReader(open(root / "patches_256.csv"))
    }
    ours = set()
    for r in csv.DictReader(open(root / "splits.csv")):
        for y, x in grid_windows(int(r["height"]), int(r["width"]), 256, 256):
            ours.add((r["name"], int(y), int(x)))
    assert ours == listed and len(ours) == 1305


class _PerPixel(nn.Module):
    """A per-pixel model: sliding-window averaging must reproduce its whole-image output exactly."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return self.conv(x)


@pytest.mark.parametrize("hw", [(70, 90), (20, 50)])  # the second is smaller than the window
def test_sliding_window_equals_whole_image_for_per_pixel_model(hw):
    torch.manual_seed(0)
    model = _PerPixel()
    x = torch.rand(3, *hw)
    probs = sliding_window_logits(model, x, 4, window=32, stride=16)
    assert probs.shape == (4, *hw)
    assert torch.allclose(probs, model(x[None]).softmax(1)[0], atol=1e-6)
    mask = model(x[None]).argmax(1)[0].numpy()
    scores, preds = evaluate_scenes(model, [(x.numpy(), mask)], 4, window=32, stride=16)
    assert (
        scores["oa"] == 1.0
        and scores["kappa"] == pytest.approx(1.0)
        and np.array_equal(preds[0], mask)
    )


def _segmenter_ckpt(tmp_path, in_channels=4, classes=6):
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    m = smp.DeepLabV3Plus(
        encoder_name="resnet18", encoder_weights=None, in_channels=in_channels, classes=classes
    )
    path = tmp_path / "seg.ckpt"
    hp = {
        "model": "deeplabv3+",
        "backbone": "resnet18",
        "in_channels": in_channels,
        "num_classes": classes,
    }
    torch.save(
        {
            "hyper_parameters": hp,
            "state_dict": {f"model.{k}": v for k, v in m.state_dict().items()},
        },
        path,
    )
    return path


def test_predict_writes_georeferenced_class_map(potsdam_root, tmp_path):
    import rasterio

    from torchgeo_ext.predict import main

    src = potsdam_root / "4_Ortho_RGBIR" / "top_potsdam_2_11_RGBIR.tif"
    out = tmp_path / "pred.tif"
    assert (
        main(
            [
                "--checkpoint",
                str(_segmenter_ckpt(tmp_path)),
                str(src),
                str(out),
                "--window",
                "64",
                "--stride",
                "64",
                "--block",
                "64",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    with rasterio.open(src) as a, rasterio.open(out) as b:
        assert (
            b.crs == a.crs
            and b.transform == a.transform
            and (b.height, b.width) == (a.height, a.width)
        )
        labels = b.read(1)
    assert labels.max() < 6 and out.with_suffix(".png").exists()


def test_predict_bad_input(potsdam_root, tmp_path):
    from torchgeo_ext.predict import main

    ckpt = _segmenter_ckpt(tmp_path, in_channels=3)
    src = potsdam_root / "4_Ortho_RGBIR" / "top_potsdam_2_11_RGBIR.tif"
    with pytest.raises(UserInputError, match="4 bands but the checkpoint expects 3"):
        main(["--checkpoint", str(ckpt), str(src), str(tmp_path / "o.tif")])
    bad = tmp_path / "corrupt.tif"
    bad.write_bytes(b"II*\x00garbage" * 10)
    with pytest.raises(UserInputError, match="not a readable GeoTIFF"):
        main(["--checkpoint", str(ckpt), str(bad), str(tmp_path / "o.tif")])
    with pytest.raises(UserInputError, match="does not exist"):
        main(["--checkpoint", str(tmp_path / "nope.ckpt"), str(src), str(tmp_path / "o.tif")])
