"""Real multi-subject MR domains (spine VB3/VB2, hippocampus): subject splits, sagittal padded
slices, label budgets, and the label-budget experiment end to end on a tiny grid."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from monai_ext.multidomain import subjects as sj
from plugins.data import shared_path

ROOT = shared_path(required=False)
HAVE = (
    ROOT is not None
    and (ROOT / "spine_mr" / "VB3").is_dir()
    and (ROOT / "spine_mr" / "VB2").is_dir()
    and (ROOT / "hippocampus_mr" / "images").is_dir()
)
pytestmark = [
    pytest.mark.skipif(not HAVE, reason="shared spine_mr / hippocampus_mr data absent"),
    pytest.mark.usefixtures("one_thread"),
]
SPEC = {s.name: s for s in sj.DOMAINS}


def _files(folder: str, pattern: str) -> list[Path]:
    return sorted((ROOT / folder).glob(pattern))


def test_splits_are_by_subject_disjoint_fixed_by_seed_with_the_named_counts() -> None:
    # subject counts from the files themselves; the named splits are 30/5/15, 9/2/6, 90/10/20
    n_files = {
        "spine_vb3": len(_files("spine_mr/VB3", "*_img.nii.gz")),
        "spine_vb2": len(_files("spine_mr/VB2", "*_img.nii.gz")),
        "hippocampus": len(_files("hippocampus_mr/images", "*.nii.gz")),
    }
    assert n_files == {"spine_vb3": 50, "spine_vb2": 17, "hippocampus": 120}
    named = {"spine_vb3": (30, 5, 15), "spine_vb2": (9, 2, 6), "hippocampus": (90, 10, 20)}
    for name, spec in SPEC.items():
        ids = [sid for sid, _, _ in sj.list_subjects(spec, ROOT)]
        assert len(ids) == len(set(ids)) == n_files[name]
        split = sj.split_subjects(ids, spec.n_val, spec.n_test, seed=0)
        counts = tuple(len(split[r]) for r in ("train", "val", "test"))
        assert counts == named[name] and sum(counts) == n_files[name]
        tr, va, te = (set(split[r]) for r in ("train", "val", "test"))
        assert not (tr & va or tr & te or va & te) and tr | va | te == set(ids)
        assert sj.split_subjects(ids, spec.n_val, spec.n_test, seed=0) == split
        assert sj.split_subjects(ids, spec.n_val, spec.n_test, seed=1)["test"] != split["test"]
    with pytest.raises(Exception, match="listed twice"):
        sj.split_subjects(["a", "b", "a", "c"], 1, 1)


def _window(img: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(img, [0.5, 99.5])
    return np.clip((img - lo) / (hi - lo), 0, 1)


def test_slices_are_sagittal_and_padded_never_resized() -> None:
    import nibabel as nib

    size = sj.common_size(sj.DOMAINS, ROOT)
    assert size[0] % 16 == 0 and size[1] % 16 == 0
    # hippocampus: no zoom, slices along axis 0, the volume's slice sits unchanged in the middle
    spec = SPEC["hippocampus"]
    sid, img_path, lab_path = sj.list_subjects(spec, ROOT)[0]
    raw = np.asarray(nib.load(str(img_path)).dataobj, np.float32)
    lab = np.asarray(nib.load(str(lab_path)).dataobj).astype(np.int64)
    d = sj.domain_slices(spec, ROOT, {"test": [sid]}, size, roles=("test",))
    assert d["image"].shape == (raw.shape[0], 1, *size)
    top, left = (size[0] - raw.shape[1]) // 2, (size[1] - raw.shape[2]) // 2
    inner = (slice(top, top + raw.shape[1]), slice(left, left + raw.shape[2]))
    k = raw.shape[0] // 2
    np.testing.assert_allclose(d["image"][k, 0][inner].numpy(), _window(raw)[k], atol=1e-5)
    np.testing.assert_array_equal(d["label"][k, 0][inner].numpy(), lab[k])
    outside = d["image"][:, 0].clone()
    outside[:, inner[0], inner[1]] = 0
    assert float(outside.abs().max()) == 0.0  # the rest is zero padding
    # spine VB3: slices along axis 2 (sagittal), uniform 2x block mean on every axis, padded
    spec = SPEC["spine_vb3"]
    sid, img_path, lab_path = sj.list_subjects(spec, ROOT)[0]
    raw = np.asarray(nib.load(str(img_path)).dataobj, np.float32)
    seg = np.asarray(nib.load(str(lab_path)).dataobj)
    d = sj.domain_slices(spec, ROOT, {"test": [sid]}, size, roles=("test",))
    zoomed = [math.ceil(s / 2) for s in raw.shape]
    assert d["image"].shape[0] == zoomed[2]
    assert (
        np.unique(d["label"].numpy()).tolist() == [0, 1] and seg.max() > 1
    )  # instance ids binarised
    h, w = zoomed[0], zoomed[1]
    top, left = (size[0] - h) // 2, (size[1] - w) // 2
    # reference: 2x2x2 block mean of the windowed volume, over full blocks only
    e = [s - s % 2 for s in raw.shape]
    win = _window(raw)[: e[0], : e[1], : e[2]]
    ref = win.reshape(e[0] // 2, 2, e[1] // 2, 2, e[2] // 2, 2).mean((1, 3, 5))
    k = ref.shape[2] // 2
    got = d["image"][k, 0, top : top + e[0] // 2, left : left + e[1] // 2].numpy()
    np.testing.assert_allclose(got, ref[:, :, k], atol=1e-5)
    # the aspect ratio is kept: the content spans h x w of the padded slice, not the square
    rows = np.nonzero(d["image"][:, 0].abs().amax((0, 2)).numpy())[0]
    cols = np.nonzero(d["image"][:, 0].abs().amax((0, 1)).numpy())[0]
    assert (
        rows.min() >= top and rows.max() < top + h and cols.min() >= left and cols.max() < left + w
    )
    assert d["spacing"] == [3.0, 3.0, 3.0]


def test_label_budget_selects_exactly_k_annotated_training_subjects() -> None:
    spec = SPEC["spine_vb2"]
    ids = [sid for sid, _, _ in sj.list_subjects(spec, ROOT)]
    split = sj.split_subjects(ids, spec.n_val, spec.n_test, seed=0)
    train = split["train"]
    for seed in (0, 1):
        chosen = {k: sj.budget_subjects(train, k, seed) for k in (1, 2, 4, 8, 0)}
        for k, got in chosen.items():
            assert len(got) == len(set(got)) == (k or len(train)) and set(got) <= set(train)
        assert set(chosen[1]) <= set(chosen[2]) <= set(chosen[4]) <= set(chosen[8])  # nested
    assert sj.budget_subjects(train, 2, 0) != sj.budget_subjects(train, 2, 1) or len(train) < 3
    size = sj.common_size(sj.DOMAINS, ROOT)
    small = {"train": train[:3], "test": split["test"][:1]}
    d = sj.domain_slices(spec, ROOT, small, size)
    pick = sj.budget_subjects(small["train"], 2, 0)
    n_slices = int(np.isin(d["subject"], pick).sum())
    keep = sj.subject_index(d, pick)  # what the experiment's training pool takes
    assert len(keep) == n_slices and set(d["subject"][keep]) == set(pick)
    assert set(d["role"][keep]) == {"train"}
    assert len(set(d["subject"][d["role"] == "train"])) == 3


def test_experiment_end_to_end_tiny_grid(tmp_path: Path) -> None:
    from monai_ext.multidomain.run import OPTIONS, reproduce
    from plugins.reporting import RunContext, RunDir

    ctx = RunContext(
        "mr-multidomain",
        RunDir(path=tmp_path),
        data="spine",
        device=torch.device("cpu"),
        progress=False,
        command="reproduce",
        option_set=OPTIONS["reproduce"],
        options={
            "budgets": "1",
            "configs": "per_domain,md_supcon",
            "seeds": 1,
            "steps": 2,
            "augment_copies": 0,
            "max_test_subjects": 1,
            "features": "4,4,8,8,16,8",
            "embedding_dim": 8,
            "embedding_hidden": 8,
        },
    )
    metrics = reproduce(ctx)
    for name in ("table.csv", "table.md", "results_per_seed.csv", "protocol.md", "claim.md"):
        assert (tmp_path / name).stat().st_size > 0
    for name in ("label_budget_curve.png", *(f"overlay_{s.name}.png" for s in sj.DOMAINS)):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    with open(tmp_path / "table.csv") as f:
        table = list(csv.DictReader(f))
    # one row per variant x domain x (structures + their mean); Dice a fraction
    expect = {
        (v, s.name, st)
        for v in ("per_domain", "md_supcon")
        for s in sj.DOMAINS
        for st in (*s.classes[1:], "mean")
    }
    assert {(r["variant"], r["domain"], r["structure"]) for r in table} == expect
    assert all(0.0 <= float(r["dice_mean"]) <= 1.0 for r in table)
    assert "dice/spine_vb2/md_supcon@1" in metrics


def test_claim_verdict_follows_the_fixed_rule() -> None:
    from monai_ext.multidomain.experiment import claim_verdict

    def row(b: int, v: str, mean: float, std: float) -> dict:
        return {
            "budget": b,
            "variant": v,
            "domain": "a",
            "structure": "mean",
            "dice_mean": mean,
            "dice_std": std,
        }

    # smallest budget: +0.05 against a seed std of 0.04 holds, +0.03 does not;
    # full labels: -0.02 within std 0.03 is "not worse", -0.05 is worse
    table = [row(1, "per_domain", 0.50, 0.02), row(1, "md_supcon", 0.55, 0.04)]
    table += [row(0, "per_domain", 0.80, 0.01), row(0, "md_supcon", 0.78, 0.03)]
    got = claim_verdict(table, ["a"], [1, 0])[0]
    assert got["smallest"].startswith("holds") and got["full"].startswith("holds")
    table[1] = row(1, "md_supcon", 0.53, 0.04)
    table[3] = row(0, "md_supcon", 0.75, 0.03)
    got = claim_verdict(table, ["a"], [1, 0])[0]
    assert got["smallest"].startswith("fails") and got["full"].startswith("fails")
