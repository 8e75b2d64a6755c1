"""GLCNet benchmarks (not tests): prints ratios against torchgeo measured in the same run.

1. Training-step time of ``GLCNetTask`` vs torchgeo's ``SimCLRTask`` on the same backbone, batch
   and view size (target: <= 1.3x; GLCNet also runs the DeepLabv3+ decoder, which SimCLR has not).
2. Peak memory (RSS, one fresh process each) of one training batch from our
   ``PotsdamPatchDataModule`` vs torchgeo's ``Potsdam2DDataModule`` on synthetic full-size tiles
   written to a temporary folder.

    python benchmarks/glcnet.py                      # resnet18, batch 8, 64 px, 2 tiles of 6000 px
    python benchmarks/glcnet.py --backbone resnet50 --batch 32 --size 224 --device cuda
    python benchmarks/glcnet.py --skip-memory --steps 3
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch


def _step(task, batch: dict, opt: torch.optim.Optimizer) -> float:
    t = time.perf_counter()
    loss = task.training_step(batch, 0)
    loss.backward()
    opt.step()
    opt.zero_grad()
    if batch["image"].is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t


def interleaved_step_times(tasks: dict, batch: dict, steps: int) -> dict[str, float]:
    """Median step time of each task, the tasks taking turns step by step, so that a change in
    the machine's load during the run hits every task alike (the ratios are what we report)."""
    opts = {k: torch.optim.SGD(t.parameters(), lr=1e-6) for k, t in tasks.items()}
    times: dict[str, list[float]] = {k: [] for k in tasks}
    for i in range(steps + 1):
        for k, task in tasks.items():
            dt = _step(task, batch, opts[k])
            if i:  # the first step warms up kernels and allocators
                times[k].append(dt)
    return {k: sorted(v)[len(v) // 2] for k, v in times.items()}


def bench_steps(args) -> None:
    import timm
    from torchgeo.trainers import SimCLRTask

    from torchgeo_ext.task import GLCNetTask

    torch.manual_seed(0)
    x = torch.rand(
        args.batch,
        args.channels,
        args.size + args.size // 4,
        args.size + args.size // 4,
        device=args.device,
    )
    sim_kw = dict(
        model=args.backbone,
        in_channels=args.channels,
        version=1,
        layers=2,
        memory_bank_size=0,
        size=args.size,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tasks = {
            "GLCNetTask": GLCNetTask(
                backbone=args.backbone,
                in_channels=args.channels,
                size=args.size,
                patch_size=max(3, round(16 * args.size / 224)),
            ),
            "SimCLRTask": SimCLRTask(**sim_kw),
            "SimCLRTask_os16": SimCLRTask(**sim_kw),
        }
        # the encoder DeepLabv3+ pretrains: the same ResNet with its last stage dilated (output
        # stride 16, the paper's), which costs 4x the last stage's FLOPs of a plain ResNet
        tasks["SimCLRTask_os16"].backbone = timm.create_model(
            args.backbone, in_chans=args.channels, num_classes=0, output_stride=16
        )
        for t in tasks.values():
            t.to(args.device)
            t.log = lambda *a, **k: None  # no trainer attached
        med = interleaved_step_times(tasks, {"image": x}, args.steps)
    glc = med["GLCNetTask"]
    print(
        f"{args.backbone}, batch {args.batch}, {args.size}-px views, {args.channels} bands, "
        f"{args.device}, {torch.get_num_threads()} threads, median of {args.steps} interleaved steps"
    )
    print(f"step time  GLCNetTask                        {glc * 1e3:8.1f} ms")
    for k, label in [
        ("SimCLRTask", "SimCLRTask (timm ResNet, stride 32)"),
        ("SimCLRTask_os16", "SimCLRTask, same stride-16 encoder"),
    ]:
        print(
            f"step time  {label:38s}{med[k] * 1e3:8.1f} ms | GLCNet / it {glc / med[k]:.2f}x (target <= 1.3x)"
        )


CHILD = r"""
import json, resource, sys, warnings
warnings.simplefilter("ignore")
kind, root, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
if kind == "ours":
    from torchgeo_ext.data import PotsdamPatchDataModule
    dm = PotsdamPatchDataModule(root, patch_size=256, batch_size=batch, val_tiles=0); dm.setup("fit")
else:
    from torchgeo.datamodules import Potsdam2DDataModule
    dm = Potsdam2DDataModule(batch_size=batch, patch_size=256, val_split_pct=0.0, root=root); dm.setup("fit")
b = next(iter(dm.train_dataloader()))
print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "image": list(b["image"].shape)}))
"""


def bench_memory(args) -> None:
    import numpy as np
    import rasterio

    from torchgeo_ext.data import potsdam_meta

    splits, _, cmap = potsdam_meta()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "4_Ortho_RGBIR").mkdir()
        rng = np.random.default_rng(0)
        n = args.tile
        for name in splits["train"][: args.tiles]:
            kw = dict(
                driver="GTiff",
                width=n,
                height=n,
                dtype="uint8",
                tiled=True,
                blockxsize=256,
                blockysize=256,
            )
            with rasterio.open(
                root / "4_Ortho_RGBIR" / f"{name}_RGBIR.tif", "w", count=4, **kw
            ) as ds:
                for r in range(0, n, 1000):  # write in strips: the generator itself stays small
                    h = min(1000, n - r)
                    ds.write(
                        rng.integers(0, 255, (4, h, n), dtype=np.uint8),
                        window=rasterio.windows.Window(0, r, n, h),
                    )
            with rasterio.open(root / f"{name}_label.tif", "w", count=3, **kw) as ds:
                for r in range(0, n, 1000):
                    h = min(1000, n - r)
                    ds.write(
                        cmap[rng.integers(0, 6, (h, n))].transpose(2, 0, 1),
                        window=rasterio.windows.Window(0, r, n, h),
                    )
        res = {}
        for kind in ("ours", "torchgeo"):
            out = subprocess.run(
                [sys.executable, "-c", CHILD, kind, str(root), str(args.mem_batch)],
                capture_output=True,
                text=True,
            )
            if out.returncode:
                print(
                    f"{kind}: failed: {out.stderr.strip().splitlines()[-1] if out.stderr else out.returncode}"
                )
                continue
            res[kind] = json.loads(out.stdout.strip().splitlines()[-1])
            print(
                f"peak RSS {kind:9s} {res[kind]['peak_mb']:8.0f} MB  (batch image {res[kind]['image']})"
            )
        if len(res) == 2:
            print(
                f"memory ratio torchgeo / ours: {res['torchgeo']['peak_mb'] / res['ours']['peak_mb']:.1f}x "
                f"({args.tiles} tiles of {n}x{n}, batch {args.mem_batch})"
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--channels", type=int, default=4)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tile", type=int, default=6000)
    p.add_argument("--tiles", type=int, default=2)
    p.add_argument(
        "--mem-batch", type=int, default=2, help="torchgeo stacks whole tiles: keep small"
    )
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--skip-steps", action="store_true")
    args = p.parse_args()
    if not args.skip_steps:
        bench_steps(args)
    if not args.skip_memory:
        bench_memory(args)


if __name__ == "__main__":
    main()
