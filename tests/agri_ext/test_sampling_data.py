import numpy as np
import pytest
import torch

from agri_ext.data import load_claws_data, weak_split
from agri_ext.sampling import class_homogeneous_batches, random_batches


def test_class_homogeneous_batches_cover_every_sample_once():
    labels = torch.tensor([0] * 7 + [1] * 3 + [3] * 1 + [2] * 5)
    batches = class_homogeneous_batches(labels, 4, torch.Generator().manual_seed(0))
    for b in batches:
        assert len(torch.unique(labels[b])) == 1 and len(b) <= 4
    seen = torch.cat(batches).sort().values
    assert torch.equal(seen, torch.arange(len(labels)))
    assert sorted(len(b) for b in batches) == [1, 1, 3, 3, 4, 4]


def test_random_batches_drop_a_trailing_singleton():
    batches = random_batches(9, 4, torch.Generator().manual_seed(0))
    assert [len(b) for b in batches] == [4, 4]


def test_weak_split_keeps_single_image_class_in_train():
    labels = torch.tensor([0] * 10 + [1] + [2] * 2)
    with pytest.warns(UserWarning, match="single image"):
        tr, te = weak_split(labels)
    assert 10 in tr.tolist() and 10 not in te.tolist()
    assert set(labels[te].tolist()) == {0, 2}
    assert len(set(tr.tolist()) & set(te.tolist())) == 0 and len(tr) + len(te) == 13


def _write_folder(root):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls, n in (("maize", 4), ("weed", 3), ("lonely", 1)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            a = (rng.random((20, 20, 3)) * 80 + [90, 60, 30]).astype(np.uint8)
            a[5:15, 5:15] = [40, 160, 40]
            if i == 0:
                Image.fromarray(a.mean(2).astype(np.uint8), "L").save(root / cls / f"{i}.png")
            elif i == 1:
                rgba = np.concatenate([a, np.full((20, 20, 1), 255, np.uint8)], 2)
                Image.fromarray(rgba, "RGBA").save(root / cls / f"{i}.png")
            else:
                Image.fromarray(a, "RGB").save(root / cls / f"{i}.png")


def test_folder_with_gray_rgba_and_single_image_class_trains(tmp_path):
    from agri_ext.run import run
    from plugins.reporting import RunContext, RunDir

    _write_folder(tmp_path / "imgs")
    with pytest.warns(UserWarning, match="single image"):
        tr, te, _ = load_claws_data(str(tmp_path / "imgs"), size=16)
    assert tr.images.shape[1:] == (3, 16, 16) and len(tr) + len(te) == 8
    ctx = RunContext(
        "claws",
        RunDir(path=tmp_path / "run"),
        data=str(tmp_path / "imgs"),
        epochs=1,
        device=torch.device("cpu"),
        options={"widths": [4, 8, 8], "image_size": 16, "batch_size": 4},
        progress=False,
    )
    with pytest.warns(UserWarning):
        m = run(ctx)
    # the grayscale file of each class has no vegetation: its mask falls back and is counted
    assert m["mask_fallbacks"] >= 1
    assert np.isfinite(m["final_loss"]) and 0 <= m["gmm_nmi"] <= 1
