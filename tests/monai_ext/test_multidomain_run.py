"""Real-data domains, slab splits, metrics, and the ``run`` entry point on the embedded default."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from monai_ext.multidomain import data
from monai_ext.multidomain.train import label_subset, surface_scores
from plugins.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def test_mni_tissue_domain_is_real_and_split_into_disjoint_slabs() -> None:
    dom = data.mni_tissue()
    assert dom.image.shape == dom.label.shape == (99, 117, 95)
    np.testing.assert_allclose(dom.spacing, [2, 2, 2])
    counts = np.bincount(dom.label.ravel(), minlength=3)
    # grey and white matter each fill a substantial part of a 2 mm MNI brain (roughly 0.6-0.8 l)
    assert 0.4e6 < counts[1] * 8 < 1.2e6 and 0.3e6 < counts[2] * 8 < 1.0e6
    sl = data.domain_slices(dom, size=32)
    assert sl["image"].shape[1:] == (1, 32, 32) and set(sl["label"].unique().tolist()) == {0, 1, 2}
    roles, slab = sl["role"], sl["slab"]
    assert set(roles) == {"train", "val", "test"}
    for s in np.unique(slab):  # a slab has one role and its slices are contiguous
        idx = np.nonzero(slab == s)[0]
        assert len(set(roles[idx])) == 1 and np.all(np.diff(idx) == 1)


@pytest.mark.skipif(
    not data.colin_available(),
    reason="Debian mricron-data absent (apt-get install -y mricron-data)",
)
def test_colin_subcortical_domain() -> None:
    dom = data.colin_subcortical()
    assert dom.classes == ["background", "caudate", "putamen", "thalamus", "hippocampus"]
    vols = np.bincount(dom.label.ravel(), minlength=5)[1:] / 1000  # ml at 1 mm
    # both hemispheres: caudate, putamen, thalamus, hippocampus are each a few to ~20 ml in AAL
    assert np.all((vols > 3) & (vols < 30)), vols


def test_label_subset_fraction() -> None:
    assert len(label_subset(100, 0.1, 0)) == 10
    assert len(label_subset(5, 0.1, 0)) == 2  # never fewer than two annotated slices
    assert len(set(label_subset(50, 0.5, 1))) == 25


def test_surface_scores_against_hand_computed_values() -> None:
    truth = torch.zeros(4, 1, 16, 16, dtype=torch.long)
    truth[:, 0, 4:8, 4:8] = 1
    pred = truth.clone()
    pred[:, 0, 4:8, 8] = 1  # one extra column: 16 -> 20 voxels per slice
    sc = surface_scores(pred, truth, np.zeros(4, int), 2, (1.0, 1.0, 1.0))
    np.testing.assert_allclose(sc["dice"], [2 * 16 / (16 + 20)], rtol=1e-6)
    np.testing.assert_allclose(sc["ravd"], [0.25])
    np.testing.assert_allclose(sc["hd95"], [1.0])  # the extra column lies 1 voxel from the truth
    perfect = surface_scores(truth, truth, np.zeros(4, int), 2, (1.0, 1.0, 1.0))
    np.testing.assert_allclose(
        [perfect["dice"][0], perfect["hd95"][0], perfect["assd"][0]], [1, 0, 0]
    )
    assert sc["missed"][0] == perfect["missed"][0] == 0


def test_surface_scores_count_missed_structures_that_the_distance_means_leave_out() -> None:
    # 3 classes, 4 slabs of 2 slices; structure 1 in every truth slab, structure 2 in slabs 0-1
    truth = torch.zeros(8, 1, 16, 16, dtype=torch.long)
    truth[:, 0, 2:6, 2:6] = 1
    truth[:4, 0, 9:13, 9:13] = 2
    slab = np.repeat(np.arange(4), 2)
    pred = truth.clone()
    pred[2:4][pred[2:4] == 1] = 0  # slab 1: structure 1 not predicted at all
    pred[0:2][pred[0:2] == 2] = 0  # slab 0: structure 2 not predicted at all
    pred[6:8, 0, 2:6, 6] = 1  # slab 3: structure 1 one column too wide (HD95 1 mm)
    sc = surface_scores(pred, truth, slab, 3, (1.0, 1.0, 1.0))
    np.testing.assert_allclose(sc["missed"], [1 / 4, 1 / 2])  # of the slabs holding each
    # the distance means see only the slabs where the structure was predicted
    np.testing.assert_allclose(sc["hd95"], [np.mean([0.0, 0.0, 1.0]), 0.0])
    np.testing.assert_allclose(sc["dice"][1], np.mean([0.0, 1.0]))


def test_run_demo_writes_outputs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from monai_ext.multidomain.run import run
    from plugins.progress import enabled, set_enabled
    from plugins.reporting import RunContext, RunDir

    ctx = RunContext(
        "mr-multidomain",
        RunDir(path=tmp_path),
        demo=True,
        device=torch.device("cpu"),
        options={"steps": 3, "augment_copies": 0},
    )
    was = enabled()
    set_enabled(True)  # a CLI test's --no-progress turns bars off process-wide
    try:
        metrics = run(ctx)
    finally:
        set_enabled(was)
    err = capsys.readouterr().err
    # the bar counts optimisation steps; scoring shows a phase with its elapsed time
    assert "md_supcon:   0%|" in err and "| 0/3 [" in err
    assert "md_supcon: Dice/HD95/ASSD on the test slabs of mni_tissue, mni_brainmask" in err
    for name in (
        "metrics.json",
        "config.yaml",
        "checkpoint.pt",
        "loss.png",
        "spectrum.png",
        "embedding.png",
        "overlay.png",
    ):
        assert (tmp_path / name).exists(), name
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert 0.0 <= saved["dice_mean"] <= 1.0 and saved["dice_mean"] == pytest.approx(
        metrics["dice_mean"]
    )
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["domain_classes"] == [3, 2]
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    # the effective settings: the user's steps and copies, the declared defaults for the rest
    assert config["steps"] == 3 and config["augment_copies"] == 0 and config["size"] == 64


def test_write_datalist_slabs_keep_scanner_space(tmp_path: Path) -> None:
    import nibabel as nib

    from monai_ext.multidomain.data import validate_datalist

    dom = data.mni_tissue()
    path = data.write_datalist(tmp_path, [dom], n_slabs=5)
    lists = json.loads(path.read_text())
    assert lists["domains"][0]["slice_axis"] == 2  # MNI is RAS; the tissue domain is axial
    items = lists["training"] + lists["validation"] + lists["test"]
    assert len(items) == 5 and len(lists["test"]) == 1 and len(lists["validation"]) == 1
    validate_datalist(items, [3], tmp_path)
    total = 0
    for item in items:
        img = nib.load(tmp_path / item["image"])
        first = int(round(np.linalg.solve(dom.affine, img.affine @ [0, 0, 0, 1])[2]))
        # the slab's first voxel maps to the same scanner point as that slice of the volume
        np.testing.assert_allclose(img.affine[:3, :3], dom.affine[:3, :3])
        np.testing.assert_array_equal(np.asarray(img.dataobj)[..., 0], dom.image[..., first])
        total += img.shape[2]
    assert total == dom.image.shape[2]


def _reproduce_context(path: Path, options: dict):
    from plugins.reporting import RunContext, RunDir

    return RunContext(
        "mr-multidomain",
        RunDir(path=path),
        device=torch.device("cpu"),
        progress=False,
        options=options,
    )


@pytest.mark.skipif(
    not data.colin_available(),
    reason="Debian mricron-data absent (apt-get install -y mricron-data)",
)
def test_reproduce_label_fraction_curve_aggregates_seeds(tmp_path: Path) -> None:
    from monai_ext.multidomain.run import reproduce
    from monai_ext.multidomain.train import CONFIGS

    options = {"steps": 1, "augment_copies": 0, "fractions": "0.05,1.0", "seeds": 2}
    metrics = reproduce(_reproduce_context(tmp_path, options))
    for name in ("summary.md", "table.md", "label_fraction_curve.png", "overlay.png"):
        assert (tmp_path / name).exists(), name
    rows = json.loads((tmp_path / "metrics_per_seed.json").read_text())
    assert len(rows) == 2 * 2 * len(CONFIGS) and {r["seed"] for r in rows} == {0, 1}
    for frac in (1.0, 0.05):
        for config in CONFIGS:
            values = [
                r["dice_mean"] for r in rows if (r["fraction"], r["config"]) == (frac, config)
            ]
            assert metrics[f"dice_mean/{config}@{frac:g}"] == pytest.approx(np.mean(values))
            assert metrics[f"dice_mean_std/{config}@{frac:g}"] == pytest.approx(np.std(values))
    # the smallest fraction annotates two slices per domain (label_subset's floor)
    assert "| 0.0500 | 2/2 |" in (tmp_path / "summary.md").read_text()


def test_reproduce_rejects_bad_fractions(tmp_path: Path) -> None:
    from monai_ext.multidomain.run import reproduce
    from plugins.errors import UserInputError

    with pytest.raises(UserInputError, match="fractions"):
        reproduce(_reproduce_context(tmp_path, {"steps": 1, "fractions": "1.0,1.5"}))
    with pytest.raises(UserInputError, match="fractions must lie in"):
        reproduce(_reproduce_context(tmp_path, {"steps": 1, "fractions": "0,1.0"}))
    with pytest.raises(UserInputError, match="configs=md,dsbn_only: expected one of per_domain"):
        reproduce(_reproduce_context(tmp_path, {"steps": 1, "configs": "md,dsbn_only"}))
    with pytest.raises(UserInputError, match="test_bn=test: expected one of running, adapt"):
        reproduce(_reproduce_context(tmp_path, {"steps": 1, "test_bn": "test"}))
    with pytest.raises(UserInputError, match="unknown option --set stepz"):
        reproduce(_reproduce_context(tmp_path, {"stepz": 1}))
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


@pytest.mark.skipif(
    not data.colin_available(),
    reason="Debian mricron-data absent (apt-get install -y mricron-data)",
)
def test_reproduce_runs_only_the_chosen_configs(tmp_path: Path) -> None:
    from monai_ext.multidomain.run import reproduce

    options = {"steps": 1, "augment_copies": 0, "fractions": "0.05", "configs": "md,md_shared_bn"}
    metrics = reproduce(_reproduce_context(tmp_path, options))
    rows = json.loads((tmp_path / "metrics_per_seed.json").read_text())
    assert [r["config"] for r in rows] == ["md", "md_shared_bn"]
    assert {k for k in metrics if k.startswith("dice_mean/")} == {
        "dice_mean/md@0.05",
        "dice_mean/md_shared_bn@0.05",
    }
    assert (tmp_path / "overlay.png").exists()


@pytest.mark.skipif(
    not data.colin_available(),
    reason="Debian mricron-data absent (apt-get install -y mricron-data)",
)
def test_reproduce_scores_with_test_adapted_bn_statistics_when_asked(tmp_path: Path) -> None:
    from monai_ext.multidomain.run import reproduce

    dice = {}
    for mode in ("running", "adapt"):
        options = {"steps": 2, "augment_copies": 0, "fractions": "0.05", "configs": "md"}
        out = tmp_path / mode
        dice[mode] = reproduce(_reproduce_context(out, {**options, "test_bn": mode}))
        assert yaml.safe_load((out / "config.yaml").read_text())["test_bn"] == mode
    # the same trained network (same seed), scored under other statistics
    assert dice["running"]["dice_mean/md@0.05"] != dice["adapt"]["dice_mean/md@0.05"]


def test_shared_bn_ablation_keeps_per_domain_heads_and_plain_batch_norm() -> None:
    from monai_ext.dsbn import DomainSpecificBatchNorm
    from monai_ext.multidomain.train import Settings, build

    net, loss_fn = build("md_shared_bn", [3, 5], Settings(features=(4, 4, 4, 8, 8, 4)))
    assert not any(isinstance(m, DomainSpecificBatchNorm) for m in net.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert [h.out_channels for h in net.heads] == [3, 5] and loss_fn.regulariser == "none"
    md, _ = build("md", [3, 5], Settings(features=(4, 4, 4, 8, 8, 4)))
    assert any(isinstance(m, DomainSpecificBatchNorm) for m in md.modules())
    with pytest.raises(ValueError, match="config must be one of"):
        build("dsbn_only", [3, 5], Settings())
