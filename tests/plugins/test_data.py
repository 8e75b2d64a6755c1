"""Real-data loaders, the shared-data locator and the batched two-view augmentation."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import plugins.data.loaders as loaders
from plugins.data import (
    TwoViewAugment,
    check_finite,
    load_cifar10,
    load_digits,
    load_image_folder,
    random_resized_crop_params,
    shared_data_dir,
    shared_path,
)
from plugins.data.augment import crop_theta, gaussian_blur
from plugins.errors import UserInputError

CUDA = [
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
    )
]


# ----------------------------------------------------------------------------- digits
def test_load_digits_is_sklearn_digits_scaled():
    from sklearn.datasets import load_digits as sk_digits

    ds = load_digits()
    ref = sk_digits()
    assert ds.images.shape == (1797, 1, 8, 8) and ds.images.dtype == torch.float32
    assert float(ds.images.min()) == 0.0 and float(ds.images.max()) == 1.0
    torch.testing.assert_close(ds.images[:, 0], torch.tensor(ref.images, dtype=torch.float32) / 16)
    assert ds.labels.dtype == torch.long and ds.labels.tolist() == ref.target.tolist()
    assert ds.classes == [str(i) for i in range(10)] and ds.num_classes == 10
    x, y = ds[3]
    assert x.shape == (1, 8, 8) and int(y) == ref.target[3]
    sub = ds.subset(torch.tensor([5, 0]))
    assert len(sub) == 2 and sub.labels.tolist() == [ref.target[5], ref.target[0]]


def test_load_digits_resized():
    ds = load_digits(size=32)
    assert ds.images.shape == (1797, 1, 32, 32)
    assert 0.0 <= float(ds.images.min()) and float(ds.images.max()) <= 1.0


# ----------------------------------------------------------------------------- CIFAR-10
def _write_batch(path, images: np.ndarray, labels: list[int]) -> None:
    with open(path, "wb") as fh:
        pickle.dump({b"data": images.reshape(len(images), -1), b"labels": labels}, fh)


@pytest.fixture
def tiny_cifar(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(5, 3, 32, 32), dtype=np.uint8)
    imgs[0, 0, 0, 0], imgs[0, 1, 1, 0], imgs[0, 2, 0, 31] = 255, 128, 0
    _write_batch(root / "data_batch_1", imgs[:3], [0, 1, 2])
    _write_batch(root / "data_batch_2", imgs[3:], [3, 9])
    _write_batch(root / "test_batch", imgs[:1], [7])
    names = [
        b"airplane",
        b"automobile",
        b"bird",
        b"cat",
        b"deer",
        b"dog",
        b"frog",
        b"horse",
        b"ship",
        b"truck",
    ]
    with open(root / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": names}, fh)
    return root, imgs


def test_load_cifar10_tiny_pickles(tiny_cifar):
    root, imgs = tiny_cifar
    ds = load_cifar10(root)
    assert ds.images.shape == (5, 3, 32, 32) and ds.labels.tolist() == [0, 1, 2, 3, 9]
    # channel-major rows: R plane, then G, then B, each row-major
    torch.testing.assert_close(ds.images, torch.tensor(imgs, dtype=torch.float32) / 255)
    assert float(ds.images[0, 0, 0, 0]) == 1.0 and float(ds.images[0, 1, 1, 0]) == pytest.approx(
        128 / 255
    )
    assert ds.classes[0] == "airplane" and ds.classes[9] == "truck"
    # the parent folder works too, and limit keeps the first rows
    assert load_cifar10(root.parent, limit=2).labels.tolist() == [0, 1]
    test = load_cifar10(root, train=False)
    assert len(test) == 1 and test.labels.tolist() == [7]


def test_load_cifar10_errors_name_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(UserInputError, match=str(missing)):
        load_cifar10(missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserInputError, match="data_batch_"):
        load_cifar10(tmp_path / "empty")


def test_load_cifar10_shared_subset():
    root = shared_path("cifar10", "cifar-10-batches-py", required=False)
    if root is None:
        pytest.skip("shared CIFAR-10 folder (../shared/data/cifar10) is absent on this machine")
    ds = load_cifar10(limit=200)
    assert ds.images.shape == (200, 3, 32, 32)
    assert 0.0 <= float(ds.images.min()) and float(ds.images.max()) <= 1.0
    assert set(ds.labels.tolist()) == set(range(10))  # classes alternate in the shared subset
    assert ds.classes[:2] == ["airplane", "automobile"]
    # real photos: per-channel means near the README's 0.49/0.48/0.45
    means = ds.images.mean(dim=(0, 2, 3))
    assert ((means > 0.3) & (means < 0.65)).all()


# ----------------------------------------------------------------------------- image folder
@pytest.fixture
def image_folder(tmp_path):
    root = tmp_path / "imgs"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    Image.new("RGB", (10, 12), (255, 0, 0)).save(root / "a" / "red.png")
    Image.new("L", (7, 7), 128).save(root / "a" / "gray.png")
    Image.new("RGBA", (9, 9), (0, 0, 255, 40)).save(root / "b" / "blue.png")
    (root / "b" / "notes.txt").write_text("not an image")
    (root / ".ipynb_checkpoints").mkdir()  # hidden folders are not classes
    return root


def test_load_image_folder_rgb_gray_rgba(image_folder):
    ds = load_image_folder(image_folder, size=16, channels=3)
    assert ds.images.shape == (3, 3, 16, 16) and ds.classes == ["a", "b"]
    assert ds.labels.tolist() == [0, 0, 1]  # a/gray.png, a/red.png, b/blue.png
    gray, red, blue = ds.images
    torch.testing.assert_close(gray, torch.full((3, 16, 16), 128 / 255))
    torch.testing.assert_close(red.mean(dim=(1, 2)), torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(
        blue.mean(dim=(1, 2)), torch.tensor([0.0, 0.0, 1.0])
    )  # alpha dropped
    one = load_image_folder(image_folder, size=8, channels=1)
    assert one.images.shape == (3, 1, 8, 8)
    assert float(one.images[1].mean()) == pytest.approx(
        76 / 255, abs=1 / 255
    )  # ITU-R 601 luma of red


def test_load_image_folder_errors(image_folder, tmp_path):
    with pytest.raises(UserInputError, match=str(tmp_path / "missing")):
        load_image_folder(tmp_path / "missing")
    with pytest.raises(UserInputError, match="channels must be 1 or 3"):
        load_image_folder(image_folder, channels=4)
    (tmp_path / "flat").mkdir()
    with pytest.raises(UserInputError, match="no class sub-folders"):
        load_image_folder(tmp_path / "flat")
    bad = image_folder / "b" / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(UserInputError, match="broken.png"):
        load_image_folder(image_folder)


# ----------------------------------------------------------------------------- locator, checks
def test_shared_data_dir_env_var(tmp_path, monkeypatch):
    (tmp_path / "cifar10").mkdir()
    monkeypatch.setenv(loaders.ENV_VAR, str(tmp_path))
    assert shared_data_dir() == tmp_path
    assert shared_path("cifar10") == tmp_path / "cifar10"
    assert shared_path("isic", required=False) is None
    with pytest.raises(UserInputError, match=str(tmp_path / "isic")):
        shared_path("isic")


def test_shared_data_dir_missing_everywhere(tmp_path, monkeypatch):
    monkeypatch.setenv(loaders.ENV_VAR, str(tmp_path / "no_such_dir"))
    monkeypatch.setattr(loaders, "_REPO_ROOT", tmp_path / "repo")
    assert shared_data_dir(required=False) is None and shared_path("x", required=False) is None
    with pytest.raises(UserInputError, match=loaders.ENV_VAR) as err:
        shared_data_dir()
    assert str(tmp_path / "no_such_dir") in str(err.value)


def test_check_finite():
    x = torch.ones(3)
    assert check_finite(x, "x") is x
    with pytest.raises(UserInputError, match="images contains 2 NaN"):
        check_finite(torch.tensor([1.0, float("nan"), float("inf")]), "images")


# ----------------------------------------------------------------------------- augmentation
@pytest.mark.parametrize("channels", [1, 3, 5])
def test_two_view_augment_shapes_range_and_views_differ(channels):
    torch.manual_seed(0)
    x = torch.rand(6, channels, 20, 20)
    aug = TwoViewAugment(size=12, p_blur=0.5)
    v1, v2 = aug(x)
    assert v1.shape == v2.shape == (6, channels, 12, 12)
    assert v1.dtype == torch.float32
    for v in (v1, v2):
        assert float(v.min()) >= 0.0 and float(v.max()) <= 1.0
    assert not torch.allclose(v1, v2)
    assert (v1 - v2).flatten(1).abs().amax(1).gt(1e-3).all()  # every pair differs, not just one


def test_two_view_augment_scales_uint8_input():
    x = torch.full((2, 3, 8, 8), 255, dtype=torch.uint8)
    v1, _ = TwoViewAugment(size=8, p_jitter=0.0, p_gray=0.0)(x)
    torch.testing.assert_close(v1, torch.ones(2, 3, 8, 8))


@pytest.mark.parametrize("device", ["cpu", *CUDA])
def test_two_view_augment_under_no_grad_on_device(device):
    x = torch.rand(4, 3, 16, 16, device=device)
    with torch.no_grad():
        v1, v2 = TwoViewAugment(size=16, p_blur=1.0)(x)
    assert v1.device == x.device and v2.device == x.device and not v1.requires_grad
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        TwoViewAugment(size=8).view(torch.rand(3, 8, 8, device=device))


@pytest.mark.parametrize("seed", range(4))
def test_crop_of_identity_box_returns_the_image(seed):
    g = torch.Generator().manual_seed(seed)
    h, w = (int(v) for v in torch.randint(3, 17, (2,), generator=g))
    x = torch.rand(3, 2, h, w, generator=g)
    box = torch.tensor([[0.0, 0.0, 1.0, 1.0]]).repeat(3, 1)

    def crop(theta, out_hw):
        grid = F.affine_grid(theta, [3, 2, *out_hw], align_corners=False)
        return F.grid_sample(
            x, grid, mode="bilinear", padding_mode="reflection", align_corners=False
        )

    torch.testing.assert_close(crop(crop_theta(box), (h, w)), x)
    flip = torch.tensor([True, False, True])
    torch.testing.assert_close(
        crop(crop_theta(box, flip), (h, w)), torch.where(flip[:, None, None, None], x.flip(-1), x)
    )
    if w % 2 == 0:  # the left half box at half width hits pixel centres exactly
        half = torch.tensor([[-0.5, 0.0, 0.5, 1.0]]).repeat(3, 1)
        torch.testing.assert_close(crop(crop_theta(half), (h, w // 2)), x[..., : w // 2])


def test_random_resized_crop_boxes_stay_inside_the_image():
    boxes = random_resized_crop_params(
        2000, scale=(0.2, 1.0), generator=torch.Generator().manual_seed(0)
    )
    cx, cy, w, h = boxes.unbind(1)
    assert ((cx.abs() + w <= 1 + 1e-6) & (cy.abs() + h <= 1 + 1e-6)).all()
    assert ((w > 0) & (h > 0)).all()
    area = w * h
    assert float(area.max()) <= 1 + 1e-6 and float(area.min()) >= 0.2 * 3 / 4 - 1e-6


def test_gaussian_blur_keeps_constants_and_mass():
    x = torch.full((2, 3, 9, 9), 0.25)
    torch.testing.assert_close(gaussian_blur(x, torch.tensor([0.5, 2.0]), 5), x)
    y = torch.zeros(1, 1, 9, 9)
    y[0, 0, 4, 4] = 1.0
    blurred = gaussian_blur(y, torch.tensor([1.0]), 5)
    assert float(blurred.sum()) == pytest.approx(1.0) and float(blurred.max()) < 1.0
