"""Domains declared in the datalist: the bundle trains, infers and evaluates on real spine and
hippocampus MR from the table alone; a fourth domain is a datalist edit; bad input is one sentence."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_ext.bundle_errors import user_error
from monai_ext.multidomain.bundle import bundle_dir
from plugins.checkpoint import load_checkpoint
from plugins.data import shared_path

SPINE = shared_path("spine_mr", required=False)
HIPPO = shared_path("hippocampus_mr", required=False)
pytestmark = [
    pytest.mark.skipif(
        SPINE is None or HIPPO is None,
        reason="shared spine_mr/ and hippocampus_mr/ are absent (set CONTRASTIVE_PLUGINS_DATA)",
    ),
    pytest.mark.usefixtures("one_thread"),
]
CONFIGS = bundle_dir() / "configs"
TINY = {"features": [4, 4, 8, 8, 16, 4]}
SPLITS = ("training", "training", "validation", "test")  # per domain: 2 / 1 / 1 subjects


def _spine(site: str, ids: list[int]) -> list[dict]:
    files = sorted((SPINE / site).glob(f"{site}_*_img.nii.gz"))
    out = []
    for i in ids:
        img = files[i]
        out.append({"image": str(img), "label": str(img).replace("_img.", "_seg.")})
    return out


def _hippo(ids: list[int]) -> list[dict]:
    files = sorted((HIPPO / "images").glob("hippocampus_*.nii.gz"))
    return [{"image": str(files[i]), "label": str(HIPPO / "labels" / files[i].name)} for i in ids]


# 3 mm spine, 2 mm hippocampus: coarse grids keep the tiny runs to seconds; the table says so
DOMAINS = [
    {
        "name": "spine_vb3",
        "labels": ["background", "vertebral body"],
        "spacing": [3.0, 3.0, 3.0],
        "roi": [80, 48],
        "label_values": {"vertebral body": [1, 2, 3, 4, 5]},
    },
    {
        "name": "spine_vb2",
        "labels": ["background", "vertebral body"],
        "spacing": [3.0, 3.0, 3.0],
        "roi": [80, 48],
        "label_values": {"vertebral body": [1, 2, 3, 4, 5, 6, 7]},
    },
    {
        "name": "hippocampus",
        "labels": ["background", "anterior", "posterior"],
        "spacing": [2.0, 2.0, 2.0],
        "roi": [32, 32],
        "slice_axis": 0,  # sagittal slices: train, infer and evaluate across another axis
    },
]
# the fourth domain: VB3 numbers its vertebral bodies L1..L5 in order, a 6-class task
LEVELS = {
    "name": "spine_levels",
    "labels": ["background", "L1", "L2", "L3", "L4", "L5"],
    "spacing": [3.0, 3.0, 3.0],
    "roi": [80, 48],
}


def _datalist(path: Path, fourth: bool = False) -> Path:
    """The datalist: the domain table and 4 subjects of each domain (2 train, 1 val, 1 test)."""
    subjects = {
        "spine_vb3": _spine("VB3", [0, 1, 2, 3]),
        "spine_vb2": _spine("VB2", [0, 1, 2, 3]),
        "hippocampus": _hippo([0, 1, 2, 3]),
    }
    domains = list(DOMAINS)
    if fourth:  # the only change: one entry in "domains" and its items
        domains.append(LEVELS)
        subjects["spine_levels"] = _spine("VB3", [4, 5, 6, 7])
    lists: dict = {"domains": domains, "training": [], "validation": [], "test": []}
    for name, items in subjects.items():
        for split, item in zip(SPLITS, items, strict=True):
            lists[split].append({**item, "domain": name})
    path.write_text(json.dumps(lists, indent=1))
    return path


def _train(root: Path, datalist: Path, **extra) -> dict:
    from monai.bundle import run

    kw = {
        "config_file": str(CONFIGS / "train.yaml"),
        "meta_file": str(CONFIGS / "metadata.json"),
        "bundle_root": str(root),
        "datalist": str(datalist),
        "max_epochs": 1,
        "batches_per_epoch": 2,
        "val_interval": 1,
        "samples_per_domain": 1,
        **TINY,
        **extra,
    }
    run(**kw)
    return kw


def _apply(config: str, root: Path, datalist: Path, out: Path, **extra) -> None:
    """inference.yaml / evaluate.yaml with data paths only: everything else from the checkpoint."""
    from monai.bundle import run

    run(
        config_file=str(CONFIGS / config),
        meta_file=str(CONFIGS / "metadata.json"),
        bundle_root=str(root),
        datalist=str(datalist),
        output_dir=str(out),
        **extra,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("three_domains")
    datalist = _datalist(root / "datalist.json")
    _train(root, datalist)
    return root, datalist


def _rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def _mapped(label_file: str, domain: dict) -> np.ndarray:
    lab = np.asarray(nib.load(label_file).dataobj).astype(np.int64)
    for cls, values in domain.get("label_values", {}).items():
        lab[np.isin(lab, values)] = domain["labels"].index(cls)
    return lab


def test_three_domains_infer_and_evaluate_from_the_checkpoint_alone(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    from monai.metrics import DiceMetric

    root, datalist = trained
    ckpt = load_checkpoint(root / "models" / "model.pt")
    card = ckpt["card"]
    # the checkpoint holds the table as declared, the network settings and input statistics
    assert [d["name"] for d in card["domains"]] == [d["name"] for d in DOMAINS]
    assert [d["labels"] for d in card["domains"]] == [d["labels"] for d in DOMAINS]
    assert card["network"]["domain_classes"] == [2, 2, 3]
    assert card["network"]["features"] == TINY["features"]
    hippo_ranges = []
    for item in _hippo([0, 1]):
        x = np.asarray(nib.load(item["image"]).dataobj, dtype=np.float32)
        lo, hi = np.percentile(x, [0.5, 99.5])
        hippo_ranges.append(hi - lo)
    assert card["stats"][2]["range_min"] == pytest.approx(min(hippo_ranges), rel=1e-5)
    assert card["stats"][2]["range_max"] == pytest.approx(max(hippo_ranges), rel=1e-5)
    assert card["stats"][0]["spacing_min"] == pytest.approx([1.5, 1.5, 1.5])

    lists = json.loads(datalist.read_text())
    _apply("inference.yaml", root, datalist, tmp_path / "pred")
    for item in lists["test"]:
        src = nib.load(item["image"])
        name = Path(item["image"]).name.replace(".nii.gz", "_seg.nii.gz")
        seg = nib.load(tmp_path / "pred" / name)
        assert seg.shape == src.shape  # back in the input's grid, not the domain's spacing
        np.testing.assert_allclose(seg.affine, src.affine, atol=1e-5)
        n_classes = len(next(d for d in DOMAINS if d["name"] == item["domain"])["labels"])
        assert np.asarray(seg.dataobj).max() < n_classes

    out = tmp_path / "eval"
    _apply("evaluate.yaml", root, datalist, out)
    rows = _rows(out / "metrics.csv")
    expected = [
        (Path(i["image"]).name.removesuffix(".nii.gz"), i["domain"], s)
        for i in lists["test"]
        for s in next(d for d in DOMAINS if d["name"] == i["domain"])["labels"][1:]
    ]
    assert [(r["case"], r["domain"], r["structure"]) for r in rows] == expected
    summary = _rows(out / "summary.csv")
    assert [(r["domain"], r["structure"]) for r in summary] == [e[1:] for e in expected]
    assert len(list((out / "overlays").glob("*.png"))) == len(lists["test"])
    # the CSV's Dice of the hippocampus case equals MONAI's DiceMetric on the written prediction
    item = lists["test"][2]
    domain = DOMAINS[2]
    seg_file = out / "seg" / Path(item["image"]).name.replace(".nii.gz", "_seg.nii.gz")
    pred = np.asarray(nib.load(seg_file).dataobj).astype(np.int64)
    truth = _mapped(item["label"], domain)
    eye = torch.eye(3)
    p = eye[torch.from_numpy(pred)].permute(3, 0, 1, 2)[None]
    t = eye[torch.from_numpy(truth)].permute(3, 0, 1, 2)[None]
    dice = DiceMetric(include_background=False, reduction="none", ignore_empty=True)(p, t)[0]
    # and the explicit formula 2|P n T| / (|P| + |T|)
    for c, structure in enumerate(domain["labels"][1:], start=1):
        inter = np.sum((pred == c) & (truth == c))
        ref = 2 * inter / (np.sum(pred == c) + np.sum(truth == c))
        row = next(r for r in rows if r["domain"] == "hippocampus" and r["structure"] == structure)
        assert float(row["dice"]) == pytest.approx(float(dice[c - 1]), abs=1e-6)
        assert float(row["dice"]) == pytest.approx(ref, abs=1e-6)
    # 'missed': the structure is in the truth, nowhere in the prediction (HD95 then empty)
    for item in lists["test"]:
        domain = next(d for d in DOMAINS if d["name"] == item["domain"])
        seg_file = out / "seg" / Path(item["image"]).name.replace(".nii.gz", "_seg.nii.gz")
        pred = np.asarray(nib.load(seg_file).dataobj).astype(np.int64)
        truth = _mapped(item["label"], domain)
        case = Path(item["image"]).name.removesuffix(".nii.gz")
        for c, structure in enumerate(domain["labels"][1:], start=1):
            row = next(r for r in rows if (r["case"], r["structure"]) == (case, structure))
            missed = (truth == c).any() and not (pred == c).any()
            assert int(row["missed"]) == int(missed)
            if missed:
                assert row["hd95"] in ("", "nan")
    for line in summary:
        mine = [
            r for r in rows if (r["domain"], r["structure"]) == (line["domain"], line["structure"])
        ]
        assert int(line["missed"]) == sum(int(r["missed"]) for r in mine)


def test_a_fourth_domain_is_a_datalist_edit(tmp_path: Path) -> None:
    datalist = _datalist(tmp_path / "datalist.json", fourth=True)
    _train(tmp_path, datalist)
    card = load_checkpoint(tmp_path / "models" / "model.pt")["card"]
    assert [d["name"] for d in card["domains"]][-1] == "spine_levels"
    assert card["network"]["domain_classes"] == [2, 2, 3, 6]
    _apply("evaluate.yaml", tmp_path, datalist, tmp_path / "eval", overlays=False)
    rows = _rows(tmp_path / "eval" / "metrics.csv")
    levels = [r for r in rows if r["domain"] == "spine_levels"]
    assert [r["structure"] for r in levels] == ["L1", "L2", "L3", "L4", "L5"]
    for r in levels:  # scores in range where defined
        assert r["dice"] == "nan" or 0.0 <= float(r["dice"]) <= 1.0


def _sentence(err: BaseException) -> str:
    found = user_error(err)
    assert found is not None, f"no UserInputError behind {err!r}"
    text = str(found)
    assert "\n" not in text and text.endswith((".", ").")), text
    return text


def _edited(src: Path, dst: Path, edit) -> Path:
    lists = json.loads(src.read_text())
    edit(lists)
    dst.write_text(json.dumps(lists))
    return dst


def test_bad_inputs_are_one_sentence(trained: tuple[Path, Path], tmp_path: Path) -> None:
    root, datalist = trained

    def no_labels(lists: dict) -> None:
        del lists["domains"][1]["labels"]

    def raw_spine_labels(lists: dict) -> None:
        del lists["domains"][1]["label_values"]  # VB2 masks hold one id per vertebra, 1..7

    def two_splits(lists: dict) -> None:
        lists["test"].append(dict(lists["training"][0]))

    cases = [
        (no_labels, r"domain 'spine_vb2' has no label names: give 'labels'"),
        (raw_spine_labels, r"VB2_\d+_seg.nii.gz holds label value 2 outside domain 1 "
         r"\('spine_vb2'\)'s classes \[0, 1\]\."),
        (two_splits, r"subject '\S+VB3_\d+_img.nii.gz' is in both 'training' and 'test'"),
    ]  # fmt: skip
    for edit, message in cases:
        bad = _edited(datalist, tmp_path / f"{edit.__name__}.json", edit)
        with pytest.raises(Exception) as info:
            _train(tmp_path / edit.__name__, bad)
        assert re.search(message, _sentence(info.value)), _sentence(info.value)
        assert not (tmp_path / edit.__name__ / "models" / "model.pt").exists()

    # a checkpoint trained on another domain table: the datalist's table differs from the file's
    other = _edited(datalist, tmp_path / "other.json", lambda x: x["domains"].reverse())
    for config in ("inference.yaml", "evaluate.yaml"):
        with pytest.raises(Exception) as info:
            _apply(config, root, other, tmp_path / "o")
        assert re.search(
            r"checkpoint \S+model.pt was trained on another domain table: its domain 0 is "
            r"'spine_vb3' .*declares 'hippocampus'",
            _sentence(info.value),
        )
    # a checkpoint without a table (a bare state dict, as older versions wrote)
    bare = tmp_path / "bare" / "models" / "model.pt"
    bare.parent.mkdir(parents=True)
    torch.save(load_checkpoint(root / "models" / "model.pt")["model"], bare)
    with pytest.raises(Exception) as info:
        _apply("inference.yaml", bare.parent.parent, datalist, tmp_path / "o")
    assert "holds no domain table" in _sentence(info.value)


def test_far_inputs_warn(trained: tuple[Path, Path], tmp_path: Path) -> None:
    from monai_ext.multidomain.domains import DomainShiftWarning

    root, datalist = trained
    lists = json.loads(datalist.read_text())
    test = lists["test"][2]  # hippocampus, trained at 1 mm
    img = nib.load(test["image"])
    x = np.asarray(img.dataobj, dtype=np.float32)
    nib.save(nib.Nifti1Image(x, np.diag([4.0, 4.0, 4.0, 1.0])), tmp_path / "coarse.nii.gz")
    nib.save(nib.Nifti1Image(x * 50.0, img.affine), tmp_path / "bright.nii.gz")
    lists["test"] = [
        {"image": str(tmp_path / "coarse.nii.gz"), "domain": "hippocampus"},
        {"image": str(tmp_path / "bright.nii.gz"), "domain": "hippocampus"},
        {"image": test["image"], "domain": "hippocampus"},
    ]
    del lists["training"], lists["validation"]
    shifted = tmp_path / "shifted.json"
    shifted.write_text(json.dumps(lists))
    with pytest.warns(DomainShiftWarning) as seen:
        _apply("inference.yaml", root, shifted, tmp_path / "pred")
    messages = [str(w.message) for w in seen if issubclass(w.category, DomainShiftWarning)]
    assert len(messages) == 2, messages
    assert re.match(r"\S+coarse.nii.gz: spacing \[4.0, 4.0, 4.0\] mm is far outside", messages[0])
    assert "bright.nii.gz: intensity range" in messages[1]
    assert all("for domain 'hippocampus'" in m for m in messages)


@pytest.mark.slow
def test_command_line_checkpoint_of_another_table_is_one_line_with_status_2(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    import os
    import subprocess
    import sys

    root, datalist = trained
    other = _edited(datalist, tmp_path / "other.json", lambda x: x["domains"].reverse())
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file"]
    cmd += [str(CONFIGS / "evaluate.yaml"), "--meta_file", str(CONFIGS / "metadata.json")]
    cmd += ["--bundle_root", str(root), "--datalist", str(other)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(f"monai.bundle: error: checkpoint {root / 'models' / 'model.pt'} was ")
