"""SuperCon on a user's own dermoscopy table (issue 21): a CSV built from the shared ISIC images in a
temporary folder, with planted byte-identical copies within and across patients.

Checked against counts computed here: the positive class (``--set positive``, no rarest-class
guess), the duplicate report, the realised splits and their check, ``predictions.csv``, the
per-group metrics and the number of positives behind each threshold."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from monai_ext.supercon.data import find_duplicates, resolve_positive
from plugins.checkpoint import load_checkpoint
from plugins.cli import main
from plugins.data import shared_path
from plugins.errors import UserInputError
from plugins.threads import cpu_threads

ISIC = shared_path("isic", required=False)
pytestmark = pytest.mark.skipif(ISIC is None, reason="shared ISIC images absent")

CLASSES = ("basal_cell_carcinoma", "melanoma", "nevus")
PER_CLASS = 40
# (source row, patient of the copy): identical bytes under another patient -> dropped by default
CROSS = [(0, "X0"), (41, "X1"), (82, "X2"), (5, "P10")]
# identical bytes under the same patient -> kept together
WITHIN = [1, 44]
# a cross-patient copy filed under another class (conflicting labels)
CONFLICT = (90, "X3", "melanoma")
TINY = ["--set", "arch=micro", "--set", "image_size=8", "--epochs", "1"]
TINY += ["--set", "stage2_epochs=1", "--set", "batch_size=16", "--device", "cpu"]
TINY += ["--no-progress", "--threads", "1"]


def _rows(classes: tuple[str, ...] = CLASSES, per_class: int = PER_CLASS) -> list[dict]:
    with (ISIC / "labels.csv").open() as f:
        clean = [r for r in csv.DictReader(f) if r["clean"] == "1"]
    out = []
    for c in classes:
        out += [r for r in clean if r["folder_label"] == c][:per_class]
    return out


def _table(root: Path, classes=CLASSES, per_class=PER_CLASS, plant=True, patient_of=None) -> Path:
    """``root/metadata.csv`` (image_name, patient_id, target) + ``root/images``; two images per
    patient (``P<k>``) unless ``patient_of`` says otherwise; the planted copies when ``plant``."""
    images = root / "images"
    images.mkdir(parents=True)
    rows = []
    for k, r in enumerate(_rows(classes, per_class)):
        name = f"images/{r['image_id']}.jpg"
        shutil.copyfile(ISIC / r["path"], root / name)
        patient = patient_of(k) if patient_of else f"P{k // 2}"
        rows.append({"image_name": name, "patient_id": patient, "target": r["folder_label"]})
    if plant:
        extra = [(i, p, rows[i]["target"]) for i, p in CROSS]
        extra += [(i, rows[i]["patient_id"], rows[i]["target"]) for i in WITHIN]
        extra.append(CONFLICT)
        for n, (i, patient, target) in enumerate(extra):
            name = f"images/copy{n}_{Path(rows[i]['image_name']).name}"
            shutil.copyfile(root / rows[i]["image_name"], root / name)
            rows.append({"image_name": name, "patient_id": patient, "target": target})
    with (root / "metadata.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, ["image_name", "patient_id", "target"])
        w.writeheader()
        w.writerows(rows)
    return root / "metadata.csv"


def _cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    with cpu_threads(1):
        code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def _read(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def nevus_run(tmp_path_factory):
    """One ``run supercon`` on the planted table with ``positive=nevus`` (shared by the tests)."""
    root = tmp_path_factory.mktemp("own")
    table = _table(root / "data")
    out = root / "runs"
    argv = ["run", "supercon", "--data", str(table), "--set", "positive=nevus", *TINY]
    argv += ["--set", "min_val_positives=1000", "--out", str(out)]
    import io
    from contextlib import redirect_stderr, redirect_stdout

    err, std = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(std), cpu_threads(1):
        code = main(argv)
    assert code == 0, err.getvalue()
    (run,) = out.iterdir()
    return {
        "table": table,
        "run": run,
        "stdout": std.getvalue(),
        "stderr": err.getvalue(),
        "metrics": json.loads((run / "metrics.json").read_text()),
        "predictions": _read(run / "predictions.csv"),
        "rows": _read(table),
    }


# -- the positive class ------------------------------------------------------------------------
def test_without_positive_and_melanoma_the_run_stops_and_asks(tmp_path, capsys):
    table = _table(tmp_path / "data", ("basal_cell_carcinoma", "nevus"), 6, plant=False)
    code, _, err = _cli(
        capsys, ["run", "supercon", "--data", str(table), *TINY, "--out", str(tmp_path / "r")]
    )
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "none is called melanoma" in err and "--set positive=NAME (or its index)" in err
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())
    code, _, err = _cli(
        capsys,
        ["run", "supercon", "--data", str(table), "--set", "positive=mel", *TINY, "--out", str(tmp_path / "r")],
    )  # fmt: skip
    assert code == 2 and "--set positive=mel: expected one of the classes" in err


def test_positive_resolves_by_name_case_or_index_and_melanoma_by_default():
    classes = ["basal_cell_carcinoma", "Melanoma", "nevus"]
    assert resolve_positive(None, classes, "x") == 1  # a class called melanoma, any case
    assert resolve_positive("nevus", classes, "x") == 2
    assert resolve_positive("NEVUS", classes, "x") == 2
    assert resolve_positive("0", classes, "x") == 0
    assert resolve_positive(0, classes, "x") == 0
    with pytest.raises(UserInputError, match="index from 0 to 2"):
        resolve_positive("3", classes, "x")
    with pytest.raises(UserInputError, match="none is called melanoma"):
        resolve_positive(None, ["a", "b"], "--data t.csv")


def test_the_named_positive_class_is_the_one_scored(nevus_run):
    from sklearn.metrics import roc_auc_score

    m, preds = nevus_run["metrics"], nevus_run["predictions"]
    ckpt = load_checkpoint(nevus_run["run"] / "checkpoint.pt", method="supercon")
    assert m["positive_class"] == "nevus" and ckpt["classes"][ckpt["positive"]] == "nevus"
    test = [r for r in preds if r["split"] == "test"]
    cols = [f"p_{c}" for c in CLASSES]
    p = np.array([[float(r[c]) for c in cols] for r in test])
    is_nevus = np.array([r["label"] == "nevus" for r in test])
    # the metrics of metrics.json are the nevus ones, recomputed from predictions.csv
    assert m["positive_predicted"] == int((p.argmax(1) == CLASSES.index("nevus")).sum())
    assert m["roc_auc"] == pytest.approx(roc_auc_score(is_nevus, p[:, 2]), abs=1e-5)
    assert m["positive_predicted_at_threshold"] == int((p[:, 2] >= m["threshold"] - 1e-6).sum())
    # per group (patient): a patient is positive when any image is
    patients = {r["group"] for r in test}
    nevus_patients = {r["group"] for r in test if r["label"] == "nevus"}
    assert m["group_n"] == len(patients) and m["group_positives"] == len(nevus_patients)


# -- exact duplicates ----------------------------------------------------------------------------
def test_duplicate_report_matches_the_planted_copies(nevus_run):
    rows = nevus_run["rows"]
    cross_sets = len(CROSS) + 1  # + the conflicting copy
    report = nevus_run["metrics"]["data"]["duplicates"]
    assert report == {
        "within_patient_sets": len(WITHIN),
        "within_patient_files": 2 * len(WITHIN),
        "cross_patient_sets": cross_sets,
        "cross_patient_files": 2 * cross_sets,
        "dropped_copies": cross_sets,
        "conflicting_label_sets": 1,
    }
    assert f"{cross_sets} set(s) across patients" in nevus_run["stdout"]
    assert f"{cross_sets} extra copies dropped" in nevus_run["stdout"]
    # the copies that were dropped are the ones filed under another patient; nothing is chained
    seen = {Path(r["path"]).name for r in nevus_run["predictions"]}
    assert len(seen) == len(rows) - cross_sets
    planted = {Path(r["image_name"]).name for r in rows[len(rows) - len(CROSS) - len(WITHIN) - 1 :]}
    dropped = planted - seen
    assert len(dropped) == cross_sets and all(n.startswith("copy") for n in dropped)
    within_copies = planted - dropped
    assert len(within_copies) == len(WITHIN)
    split_of = {Path(r["path"]).name: r["split"] for r in nevus_run["predictions"]}
    for name in within_copies:  # each within-patient copy sits in its original's split
        assert split_of[name] == split_of[name.split("_", 1)[1]]


def test_duplicates_stop_refuses_in_one_sentence(tmp_path, capsys):
    table = _table(tmp_path / "data")
    argv = ["run", "supercon", "--data", str(table), "--set", "duplicates=stop", *TINY]
    code, _, err = _cli(capsys, [*argv, "--out", str(tmp_path / "r")])
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"{len(CROSS) + 1} set(s) of byte-identical files belong to different patients" in err


def test_find_duplicates_never_chains_patients():
    # a and b share a file, b and c share another: two sets, two drops, three patients kept apart
    hashes = ["h1", "h1", "h2", "h2", "h3"]
    groups = ["a", "b", "b", "c", "c"]
    r = find_duplicates(hashes, groups, np.zeros(5, dtype=np.int64))
    assert (r.cross_sets, r.cross_files, r.dropped.tolist()) == (2, 4, [1, 3])


# -- the realised splits -------------------------------------------------------------------------
def test_split_report_matches_the_predictions_and_keeps_patients_apart(nevus_run):
    preds, splits = nevus_run["predictions"], nevus_run["metrics"]["data"]["splits"]
    total = len(preds)
    patients: dict[str, set] = {}
    for r in preds:
        patients.setdefault(r["group"], set()).add(r["split"])
    assert all(len(s) == 1 for s in patients.values())  # no patient straddles a split
    for name in ("train", "validation", "test"):
        mine = [r for r in preds if r["split"] == name]
        e = splits[name]
        assert e["images"] == len(mine) and e["fraction"] == pytest.approx(len(mine) / total)
        assert e["class_counts"] == {c: sum(r["label"] == c for r in mine) for c in CLASSES}
        assert e["groups"] == len({r["group"] for r in mine})
        assert abs(e["fraction"] - e["target_fraction"]) <= 0.05 + 3 / total
    sizes: dict[str, int] = {}
    for r in preds:
        sizes[r["group"]] = sizes.get(r["group"], 0) + 1
    assert splits["largest_group"]["images"] == max(sizes.values())
    for name in ("train", "validation", "test"):
        assert f"{name}: {splits[name]['images']} images" in nevus_run["stdout"]


def test_a_split_far_from_its_target_is_refused(tmp_path, capsys):
    # one patient holds 40 of 120 images: the test split cannot be near 20%
    table = _table(
        tmp_path / "data", plant=False, patient_of=lambda k: "BIG" if k % 3 == 0 else f"P{k}"
    )
    argv = ["run", "supercon", "--data", str(table), *TINY, "--out", str(tmp_path / "r")]
    code, _, err = _cli(capsys, argv)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "split of --data" in err and "the largest patient group has 40 images" in err
    assert "split_tolerance" in err
    # the same table passes with a tolerance the user chose
    code, out, err = _cli(capsys, [*argv[:-2], "--set", "split_tolerance=0.5", "--set", "val_fraction=0", "--out", str(tmp_path / "r2")])  # fmt: skip
    assert code == 0, err
    assert "largest group: 40 images" in out


def test_a_split_missing_a_class_is_refused(tmp_path, capsys):
    # every nevus image belongs to one patient: only one split can hold nevus
    def patient(k: int) -> str:
        return "NEV" if k >= 2 * 12 else f"P{k}"

    table = _table(tmp_path / "data", per_class=12, plant=False, patient_of=patient)
    argv = ["run", "supercon", "--data", str(table), *TINY, "--out", str(tmp_path / "r")]
    code, _, err = _cli(capsys, argv)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "has no image of class(es) nevus" in err


# -- thresholds --------------------------------------------------------------------------------------
def test_threshold_reports_its_validation_positives_and_warns(nevus_run):
    m, preds = nevus_run["metrics"], nevus_run["predictions"]
    val_pos = sum(r["split"] == "validation" and r["label"] == "nevus" for r in preds)
    val_n = sum(r["split"] == "validation" for r in preds)
    assert m["threshold_from"] == "validation split"
    assert (m["threshold_positives"], m["threshold_images"]) == (val_pos, val_n)
    assert f"rests on {val_pos} positive image(s) of {val_n}" in nevus_run["stderr"]
    assert "min_val_positives=1000" in m["threshold_warning"]


def test_threshold_from_out_of_fold_scores_uses_every_training_positive(tmp_path, capsys):
    table = _table(tmp_path / "data", per_class=16, plant=False)
    argv = ["run", "supercon", "--data", str(table), "--set", "threshold_from=cv"]
    argv += ["--set", "cv_folds=2", *TINY, "--out", str(tmp_path / "r")]
    code, _, err = _cli(capsys, argv)
    assert code == 0, err
    (run,) = (tmp_path / "r").iterdir()
    m = json.loads((run / "metrics.json").read_text())
    preds = _read(run / "predictions.csv")
    train_pos = sum(r["split"] == "train" and r["label"] == "melanoma" for r in preds)
    assert m["positive_class"] == "melanoma"  # the default when a class is called so
    assert m["threshold_from"].startswith("out-of-fold scores, 2 folds")
    assert m["threshold_positives"] == train_pos
    assert "threshold_validation" in m and np.isfinite(m["threshold"])
    assert load_checkpoint(run / "checkpoint.pt", method="supercon")["threshold"] == m["threshold"]
    assert torch.isfinite(torch.tensor(m["positive_f1_at_validation_threshold"]))
