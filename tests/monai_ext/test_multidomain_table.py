"""The domain table at work, without the shared data: each domain's ``slice_axis`` (the plane the
2-D network sees, declared in the datalist, used by training crops, the bundle's slice inferer and
``run mr-multidomain --data`` alike, after RAS reorientation as the bundle's ``Orientationd``), and
the training statistics of the checkpoint's card taken from the checks' single read."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_ext.multidomain.bundle import DomainInferStep
from monai_ext.multidomain.data import datalist_domains, ras_axis, to_ras
from monai_ext.multidomain.domains import DomainRow, domain_slice_crop, parse_domain
from plugins.data import shared_path
from plugins.errors import UserInputError

ROW = {"name": "knee", "labels": ["background", "bone"], "spacing": [1, 1, 1], "roi": [16, 32]}


def test_slice_axis_defaults_to_axial_is_stored_and_refuses_other_values() -> None:
    row = parse_domain(ROW, 0, "datalist d.json")
    assert row.slice_axis == 2
    sagittal = parse_domain({**ROW, "slice_axis": 0}, 0, "datalist d.json")
    assert sagittal.slice_axis == 0
    # the checkpoint card stores the row as plain types and reads it back unchanged
    assert parse_domain(sagittal.as_dict(), 0, "checkpoint") == sagittal
    for bad in (3, -1, "sagittal", True, 1.5):
        with pytest.raises(UserInputError, match="'slice_axis' must be 0, 1 or 2") as err:
            parse_domain({**ROW, "slice_axis": bad}, 0, "datalist d.json")
        assert "domain 'knee'" in str(err.value) and len(str(err.value).splitlines()) == 1


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_training_crop_is_one_slice_across_the_declared_axis(axis: int) -> None:
    shape = (20, 40, 60)
    # every voxel holds its index along ``axis``: a slice across that axis is one constant value
    index = np.indices(shape)[axis].astype(np.float32)
    row = DomainRow("d", ("bg", "fg"), (1.0, 1.0, 1.0), (16, 16), {}, axis)
    crop = domain_slice_crop([row], ["image"])
    for seed in range(3):
        crop.transforms[0].set_random_state(seed)
        out = crop({"image": MetaTensor(torch.from_numpy(index)[None]), "domain": 0})["image"]
        assert tuple(out.shape) == (1, 16, 16)
        assert torch.unique(out).numel() == 1  # one slice across ``axis``, not along another
        assert 0 <= float(out.flatten()[0]) < shape[axis]


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_inferer_runs_the_network_on_slices_across_the_declared_axis(axis: int) -> None:
    shape = (6, 8, 10)
    roi = [s for a, s in enumerate(shape) if a != axis]
    row = DomainRow("d", ("bg", "fg"), (1.0, 1.0, 1.0), tuple(roi), {}, axis)  # type: ignore[arg-type]
    step = DomainInferStep.for_table([row])

    class Recorder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.seen: set[tuple[int, ...]] = set()

        def forward(self, x: torch.Tensor, domain: int) -> torch.Tensor:
            self.seen.add(tuple(x.shape[2:]))
            return torch.cat([x, -x], 1)  # 2 classes, each pixel's own value

    net = Recorder()
    engine = SimpleNamespace(
        state=SimpleNamespace(device=torch.device("cpu")),
        network=net,
        inferer=None,
        fire_event=lambda event: None,
    )
    image = torch.arange(np.prod(shape), dtype=torch.float32).reshape(1, 1, *shape)
    step(engine, {"image": image, "domain": torch.tensor([0])})
    assert net.seen == {tuple(roi)}  # 2-D windows of the two in-plane axes
    pred = engine.state.output["pred"]
    torch.testing.assert_close(pred[:, :1], image)  # every slice back in its place


def test_to_ras_undoes_a_flipped_header() -> None:
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    ras = np.diag([1.5, 1.5, 2.0, 1.0])
    lps = ras.copy()
    lps[:2, :2] *= -1  # the same grid written L-P-S: x and y flipped
    lps[:2, 3] = [1.5 * 1, 1.5 * 2]  # corner voxel at the same place
    out, affine = to_ras(data[::-1, ::-1], lps)
    np.testing.assert_array_equal(out, data)
    np.testing.assert_allclose(affine[:3, :3], ras[:3, :3])


def test_ras_axis_follows_the_header() -> None:
    # voxel axes stored as (anterior, superior, left): voxel axis 2 is the RAS x axis
    affine = np.array([[0, 0, -1, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]], float)
    assert [ras_axis(affine, a) for a in range(3)] == [1, 2, 0]
    assert [ras_axis(np.eye(4), a) for a in range(3)] == [0, 1, 2]


SPINE = shared_path("spine_mr", "VB3", required=False)


@pytest.mark.skipif(SPINE is None, reason="shared spine_mr/ is absent")
def test_run_path_slices_across_the_declared_axis_of_the_ras_volume(tmp_path: Path) -> None:
    """A spine volume written L-P-S and sliced across axis 0: the slices are the RAS volume's
    ``[x, :, :]``, as the bundle slices it."""
    pairs = []
    for n in (1, 2):
        img = nib.load(SPINE / f"VB3_{n:02d}_img.nii.gz")
        seg = nib.load(SPINE / f"VB3_{n:02d}_seg.nii.gz")
        flip = np.diag([-1.0, -1.0, 1.0, 1.0])
        flip[:2, 3] = [img.shape[0] - 1, img.shape[1] - 1]  # voxel i -> (X-1-i), same anatomy
        affine = img.affine @ flip
        paths = []
        for src, kind in ((img, "img"), (seg, "seg")):
            data = np.asarray(src.dataobj)[::-1, ::-1]
            path = tmp_path / f"lps_{n}_{kind}.nii.gz"
            nib.save(nib.Nifti1Image(np.ascontiguousarray(data), affine), path)
            paths.append(str(path))
        pairs.append((paths, np.asarray(img.dataobj, dtype=np.float64), np.asarray(seg.dataobj)))
    row = {
        "name": "spine",
        "labels": ["background", "vertebral body"],
        "spacing": [1.5, 1.5, 1.5],
        "roi": [80, 144],
        "label_values": {"vertebral body": [1, 2, 3, 4, 5]},
        "slice_axis": 0,
    }
    items = [{"image": p[0], "label": p[1], "domain": "spine"} for p, _, _ in pairs]
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"domains": [row], "training": items[:1], "test": items[1:]}))
    (d,), _ = datalist_domains(path)
    for case, (_, image, seg) in zip(d["cases"], pairs, strict=True):
        assert len(case.index) == image.shape[0]  # one slice per RAS x position
        top, left, h, w = case.box
        assert (h, w) == image.shape[1:]
        lo, hi = np.percentile(image, [0.5, 99.5])
        scaled = np.clip((image - lo) / (hi - lo), 0, 1)
        for x in (0, image.shape[0] // 2):
            got = d["image"][case.index[x], 0, top : top + h, left : left + w].numpy()
            np.testing.assert_allclose(got, scaled[x], atol=1e-5)
            lab = d["label"][case.index[x], 0, top : top + h, left : left + w].numpy()
            np.testing.assert_array_equal(lab, seg[x] > 0)
        np.testing.assert_array_equal(case.truth[:, 0].numpy(), seg > 0)


def test_training_statistics_reuse_the_check_s_read(tmp_path: Path, monkeypatch) -> None:
    """check_items reads every volume; training_stats takes its statistics from that read instead
    of reading the training images a second time (and reads a file that changed since)."""
    import monai_ext.multidomain.domains as domains

    rng = np.random.default_rng(0)
    items = []
    for i in range(3):
        image = rng.normal(100 * (i + 1), 10, (8, 9, 10)).astype(np.float32)
        label = (rng.random((8, 9, 10)) > 0.5).astype(np.uint8)
        affine = np.diag([1.0 + i, 1.0, 2.0, 1.0])
        for kind, data in (("img", image), ("seg", label)):
            nib.save(nib.Nifti1Image(data, affine), tmp_path / f"v{i}_{kind}.nii.gz")
        items.append(
            {
                "image": str(tmp_path / f"v{i}_img.nii.gz"),
                "label": str(tmp_path / f"v{i}_seg.nii.gz"),
                "domain": 0,
            }
        )
    table = [parse_domain(ROW, 0, "datalist d.json")]
    domains.check_items(items, table)
    reads = []
    real = domains.load_volume
    monkeypatch.setattr(domains, "load_volume", lambda p, *a: reads.append(p) or real(p, *a))
    (stats,) = domains.training_stats(items, table)
    assert reads == []  # no second read
    ranges = []
    for item in items:
        x = np.asarray(nib.load(item["image"]).dataobj, dtype=np.float32)
        lo, hi = np.percentile(x, [0.5, 99.5])
        ranges.append(hi - lo)
    assert stats["n"] == 3
    assert stats["range_min"] == pytest.approx(min(ranges)) and stats["range_max"] == pytest.approx(
        max(ranges)
    )
    assert stats["spacing_min"] == [1.0, 1.0, 2.0] and stats["spacing_max"] == [3.0, 1.0, 2.0]
    # a file rewritten after the check is read again
    nib.save(nib.Nifti1Image(np.zeros((8, 9, 10), np.float32), np.eye(4)), items[0]["image"])
    (after,) = domains.training_stats(items, table)
    assert reads == [items[0]["image"]] and after["range_min"] == 0.0


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_evaluation_overlay_shows_the_plane_the_network_saw(axis: int) -> None:
    from monai_ext.multidomain.evaluate import overlay_slices

    shape = (6, 8, 10)
    truth = np.zeros(shape, np.int64)
    index = [slice(None)] * 3
    index[axis] = 3  # the slice with the most labelled voxels lies at 3 along ``axis``
    truth[tuple(index)] = 1
    image = np.indices(shape)[axis].astype(np.float32)  # constant across each slice of ``axis``
    # written L-P-S: the overlay reorients to RAS first
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip = lambda v: v[::-1, ::-1]  # noqa: E731
    img2d, truth2d, pred2d = overlay_slices(flip(image), flip(truth), flip(truth), lps, axis)
    assert img2d.shape == tuple(s for a, s in enumerate(shape) if a != axis)
    assert np.unique(img2d).tolist() == [3.0] and truth2d.all() and pred2d.all()
