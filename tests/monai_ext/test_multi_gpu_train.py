"""The bundles' ``configs/multi_gpu_train.yaml`` overrides (MONAI model-zoo pattern).

1. Gradient: two gloo processes build ``network``, ``loss`` and the training step from the shipped
   ``train.yaml + multi_gpu_train.yaml`` (DDP, global BatchNorm, gathered SupCon / margin) and take
   one step on their halves of a fixed batch; the all-reduced gradient must equal the gradient of
   one process on the whole batch built from the single-process config, to 1e-5. The same check must
   fail when the regulariser is not gathered, and when BatchNorm is not global.
2. ``torchrun --nproc_per_node 2 -m monai.bundle run`` with the override trains each bundle on CPU
   (gloo) for a few iterations and rank 0 writes the checkpoint.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from monai_ext.multidomain.bundle import bundle_dir as md_bundle_dir
from monai_ext.supercon.bundle import bundle_dir as sc_bundle_dir
from plugins.data import shared_path
from plugins.distributed import GlobalBatchNorm, revert_global_batchnorm
from plugins.testing import run_gloo

WORLD = 2
MD = md_bundle_dir() / "configs"
SC = sc_bundle_dir() / "configs"
TINY_FEATURES = [4, 4, 8, 8, 16, 4]
VARIANTS = ("synced", "no_gather", "local_bn")
TOL = 1e-5
CPU = {"device": "$torch.device('cpu')"}  # the gloo ranks and the reference, on a GPU machine too


def _parser(files: list[Path], values: dict):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    for key, value in {**values, **CPU}.items():
        parser[key] = value
    return parser


def _engine(network: torch.nn.Module, loss: torch.nn.Module) -> SimpleNamespace:
    """What the bundles' ``iteration_update`` reads from MONAI's trainer; SGD with lr 0 keeps the
    weights, so the gradients can be compared after the step."""
    return SimpleNamespace(
        state=SimpleNamespace(device=torch.device("cpu"), output=None),
        network=network,
        optimizer=torch.optim.SGD(network.parameters(), lr=0.0),
        loss_function=loss,
        fire_event=lambda event: None,
    )


def _grads(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys() and a
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _step(parser, step_key: str, state: dict, batch: dict, variant: str = "synced"):
    """Build network, loss and training step from ``parser`` (starting from the weights ``state``)
    and take one step on ``batch``; returns the bare network (its gradients) and the step's output.
    ``variant``: ``no_gather`` turns the gathering off, ``local_bn`` makes BatchNorm per rank."""
    if variant == "no_gather":
        key = "gather_distributed" if "gather_distributed" in parser else "loss#gather_distributed"
        parser[key] = False
    parser.get_parsed_content("network_def").load_state_dict(state)
    net = parser.get_parsed_content("network")
    bare = getattr(net, "module", net)
    if variant == "local_bn":
        revert_global_batchnorm(bare)
    step = parser.get_parsed_content(step_key)
    if hasattr(step, "views"):  # SuperCon's random views -> fixed ones, the same in every run
        step.views = lambda x: (x, 0.9 * x.flip(-1) + 0.05)
    out = step(_engine(net, parser.get_parsed_content("loss")), batch)
    return bare, out


def _ddp_worker(
    rank: int, files: list[Path], values: dict, step_key: str, state: dict, batch: dict
):
    """One rank: its half of ``batch``, one step per variant; returns (gradients, loss)."""
    torch.set_num_threads(1)
    n = len(batch["label"]) // WORLD
    local = {k: v[rank * n : (rank + 1) * n] for k, v in batch.items()}
    out = {}
    for variant in VARIANTS:
        net, res = _step(_parser(files, values), step_key, state, local, variant)
        if variant != "local_bn":  # every BatchNorm (DSBN's per-domain ones too) is global
            bns = [m for m in net.modules() if isinstance(m, _BatchNorm)]
            assert bns and all(isinstance(m, GlobalBatchNorm) for m in bns)
        out[variant] = (_grads(net), float(res["loss"]))
    return out


def _check(files: list[Path], values: dict, step_key: str, batch: dict) -> float:
    """Gradients of the DDP step (``files`` + multi_gpu_train.yaml) against one process on the
    whole batch (``files`` alone); returns the largest difference."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    single = _parser(files, values)
    state = single.get_parsed_content("network_def").state_dict()
    multi = [*files, files[0].parent / "multi_gpu_train.yaml"]
    ranks = run_gloo(_ddp_worker, WORLD, multi, values, step_key, state, batch)
    net, out = _step(single, step_key, state, batch)
    reference = _grads(net)
    synced = ranks[0]["synced"][0]
    assert _max_diff(synced, ranks[1]["synced"][0]) == 0.0  # DDP's all-reduce: equal on both
    # the mean of the ranks' losses is the whole batch's loss (gathered regulariser included)
    mean_loss = sum(r["synced"][1] for r in ranks) / WORLD
    assert mean_loss == pytest.approx(float(out["loss"]), rel=1e-5)
    # the check can fail: without gathering, or with per-rank BatchNorm, the gradients differ
    for variant in ("no_gather", "local_bn"):
        assert _max_diff(ranks[0][variant][0], reference) > 100 * TOL, variant
    return _max_diff(synced, reference)


# -- multi-domain segmentation ---------------------------------------------------------------------
MD_VALUES = {"domain_classes": [3, 2], "features": TINY_FEATURES, "lam": 1.0}


def _md_batch(seed: int = 0) -> dict:
    """Global batch as DomainBalancedBatchSampler lays it out: per rank, 2 samples of each of the
    2 domains (32x32 blobs with 2 and 1 foreground classes; the gradient identity holds for any
    input, the bundle run below uses volumes)."""
    from monai.data import create_test_image_2d

    rng = np.random.RandomState(seed)
    images, labels, domains = [], [], []
    for _ in range(WORLD):
        for d, classes in enumerate(MD_VALUES["domain_classes"]):
            for _ in range(2):
                img, seg = create_test_image_2d(
                    32, 32, num_objs=3, rad_max=8, num_seg_classes=classes - 1, random_state=rng
                )
                images.append(img)
                labels.append(seg)
                domains.append(d)
    return {
        "image": torch.tensor(np.stack(images), dtype=torch.float32)[:, None],
        "label": torch.tensor(np.stack(labels), dtype=torch.float32)[:, None],
        "domain": torch.tensor(domains),
    }


@pytest.mark.parametrize("regulariser", ["supcon", "margin"])
def test_multidomain_ddp_step_equals_one_process_on_whole_batch(regulariser: str) -> None:
    values = {**MD_VALUES, "regulariser": regulariser}
    diff = _check([MD / "train.yaml"], values, "train#trainer#iteration_update", _md_batch())
    assert diff < TOL


# -- SuperCon stage 1 --------------------------------------------------------------------------------
SC_VALUES = {"arch": "micro", "image_size": 16}


def _sc_batch() -> dict:
    """12 real digits (scikit-learn's, embedded) of 2 classes as 3-channel 16x16 images."""
    from plugins.data import load_digits

    data = load_digits(size=16)
    keep = torch.cat([torch.nonzero(data.labels == c).reshape(-1)[:6] for c in (0, 1)])
    keep = keep[torch.randperm(len(keep), generator=torch.Generator().manual_seed(0))]
    return {"image": data.images[keep].repeat(1, 3, 1, 1), "label": data.labels[keep]}


def test_supercon_stage1_ddp_step_equals_one_process_on_whole_batch() -> None:
    diff = _check([SC / "train_stage1.yaml"], SC_VALUES, "trainer#iteration_update", _sc_batch())
    assert diff < TOL


def test_balanced_sampler_splits_one_global_draw_between_ranks() -> None:
    from monai_ext.distributed import DistributedBalancedSampler

    labels = [0] * 90 + [1] * 10
    shares = [DistributedBalancedSampler(labels, seed=3, num_replicas=2, rank=r) for r in (0, 1)]
    for s in shares:
        s.set_epoch(1)
    draws = [list(s) for s in shares]
    assert len(draws[0]) == len(draws[1]) == 50  # as many steps on every rank
    # the ranks interleave one global sequence drawn from seed + epoch, as a single process would
    gen = torch.Generator().manual_seed(4)
    weights = torch.tensor([1 / 90] * 90 + [1 / 10] * 10, dtype=torch.float64)
    whole = torch.multinomial(weights, 100, True, generator=gen).tolist()
    assert draws[0] == whole[0::2] and draws[1] == whole[1::2]
    minority = sum(labels[i] for d in draws for i in d) / 100
    assert 0.35 < minority < 0.65  # balanced, against 0.1 in the data


def test_a_share_smaller_than_one_batch_is_one_sentence() -> None:
    from monai_ext.distributed import distributed_sampler
    from plugins.errors import UserInputError

    items = [{"image": f"{i}.jpg", "label": i % 2} for i in range(12)]
    assert len(distributed_sampler(items, False, 0, 6, num_replicas=2, rank=1)) == 6
    with pytest.raises(UserInputError, match="each of the 2 processes gets 6 of the 12 training"):
        distributed_sampler(items, True, 0, 8, num_replicas=2, rank=0)


# -- torchrun ----------------------------------------------------------------------------------------
def _torchrun(configs: list[Path], meta: Path, cwd: Path, **overrides: object) -> str:
    """``torchrun --standalone --nproc_per_node 2 -m monai.bundle run`` (``torchrun`` is
    ``python -m torch.distributed.run``; this interpreter's) on CPU, so gloo; returns the log."""
    files = "[" + ",".join(f"'{c}'" for c in configs) + "]"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={WORLD}",
    ]
    cmd += ["-m", "monai.bundle", "run", "--config_file", files, "--meta_file", str(meta)]
    for key, value in overrides.items():
        cmd += [f"--{key}", json.dumps(value) if not isinstance(value, str) else value]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "PYTHONWARNINGS": "ignore",
    }
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    return log


def _md_datalist(root: Path) -> Path:
    """Two domains declared in the datalist (3 and 2 classes), two training and two validation
    volumes each (blobs; the gradient test above is the numerical check)."""
    import nibabel as nib
    from monai.data import create_test_image_3d

    root.mkdir(parents=True)
    rng = np.random.RandomState(0)
    lists: dict = {
        "domains": [
            {
                "name": "a",
                "labels": ["background", "x", "y"],
                "spacing": [2, 2, 3],
                "roi": [32, 32],
            },
            {"name": "b", "labels": ["background", "z"], "spacing": [2, 2, 3], "roi": [32, 16]},
        ],
        "training": [],
        "validation": [],
    }
    for d, classes in enumerate([3, 2]):
        for i, role in enumerate(["training", "training", "validation", "validation"]):
            img, seg = create_test_image_3d(
                32,
                32,
                10,
                num_objs=4,
                rad_max=4,
                rad_min=2,
                num_seg_classes=classes - 1,
                random_state=rng,
            )
            aff = np.diag([2.0, 2.0, 3.0, 1.0])
            nib.save(nib.Nifti1Image(img.astype(np.float32), aff), root / f"d{d}_{i}_img.nii.gz")
            nib.save(nib.Nifti1Image(seg.astype(np.uint8), aff), root / f"d{d}_{i}_lab.nii.gz")
            item = {"image": f"d{d}_{i}_img.nii.gz", "label": f"d{d}_{i}_lab.nii.gz"}
            lists[role].append({**item, "domain": "ab"[d]})
    path = root / "datalist.json"
    path.write_text(json.dumps(lists))
    return path


def test_torchrun_trains_multidomain_bundle_with_override(tmp_path: Path) -> None:
    from plugins.checkpoint import load_checkpoint

    datalist = _md_datalist(tmp_path / "data")
    log = _torchrun(
        [MD / "train.yaml", MD / "multi_gpu_train.yaml"],
        MD / "metadata.json",
        tmp_path,
        bundle_root=str(tmp_path),
        datalist=str(datalist),
        features=TINY_FEATURES,
        max_epochs=1,
        batches_per_epoch=2,  # one global batch per rank
        samples_per_domain=2,
        val_interval=1,
    )
    assert log.count("Epoch: 1/1, Iter: 1/1") == 1  # one step per rank, logged by rank 0 only
    # one TensorBoard file: the handler is not even built on rank 1 (building it writes a file)
    assert len(list((tmp_path / "eval").glob("events.out.tfevents*"))) == 1
    state = load_checkpoint(tmp_path / "models" / "model.pt")
    weights = state.get("model", state)
    assert weights and not any(k.startswith("module.") for k in weights)  # the bare network
    # validation ran on both ranks' shares: rank 0's metrics file lists all four volumes
    rows = (tmp_path / "eval" / "val_mean_dice_raw.csv").read_text().splitlines()[1:]
    assert len(rows) == 4


def _isic_folder(root: Path, per_class: int = 8) -> Path:
    """ISIC 2020 layout (``metadata.csv``: image_name, patient_id, target) with real shared ISIC
    images, two per patient (the bundle's split is patient-disjoint)."""
    src = shared_path("isic", required=False)
    if src is None:
        pytest.skip("shared ISIC data absent (../shared/data/isic)")
    data = root / "data"
    data.mkdir(parents=True)
    with (src / "labels.csv").open() as f:
        clean = [r for r in csv.DictReader(f) if r["clean"] == "1"]
    rows = [["image_name", "patient_id", "target"]]
    for target, name in ((1, "melanoma"), (0, "nevus")):
        for i, r in enumerate([r for r in clean if r["folder_label"] == name][:per_class]):
            shutil.copy(src / r["path"], data / f"{r['image_id']}.jpg")
            rows.append([r["image_id"], f"{name}_{i // 2}", target])
    with (data / "metadata.csv").open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return root


def test_torchrun_trains_supercon_stage1_with_override(tmp_path: Path) -> None:
    root = _isic_folder(tmp_path)
    log = _torchrun(
        [SC / "train_stage1.yaml", SC / "multi_gpu_train.yaml"],
        SC / "metadata.json",
        tmp_path,
        bundle_root=str(root),
        arch="micro",
        image_size=24,
        batch_size=4,  # per rank: 12 training images -> 6 per rank -> one batch of 4
        max_epochs=1,
        balanced="true",  # DistributedBalancedSampler
    )
    assert log.count("train_supcon_loss") == 1  # one step on each rank, logged by rank 0 only
    state = torch.load(root / "models" / "stage1.pt", map_location="cpu", weights_only=True)
    assert not any(k.startswith("module.") for k in state.get("model", state))


@pytest.mark.slow
def test_torchrun_trains_supercon_stage2_with_override(tmp_path: Path) -> None:
    root = _isic_folder(tmp_path)
    common = {"bundle_root": str(root), "arch": "micro", "image_size": 24, "batch_size": 4}
    configs = [SC / "train_stage1.yaml", SC / "multi_gpu_train.yaml"]
    _torchrun(configs, SC / "metadata.json", tmp_path, max_epochs=1, **common)
    stage1 = torch.load(root / "models" / "stage1.pt", map_location="cpu", weights_only=True)
    configs[0] = SC / "train_stage2.yaml"
    log = _torchrun(configs, SC / "metadata.json", tmp_path, max_epochs=2, lr=0.05, **common)
    # every rank validates (the AUC is all-gathered: one rank alone would wait forever); rank 0 logs
    assert log.count("val_auc:") == 2
    best = torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True)
    best, stage1 = best.get("model", best), stage1.get("model", stage1)
    for k, v in stage1.items():  # stage 2 trained the classifier only, on every rank alike
        if not k.startswith("classifier"):
            assert torch.equal(v, best[k]), k
    assert not torch.equal(stage1["classifier.weight"], best["classifier.weight"])
