"""Data-loading throughput of the streamed datamodule against torchvision's ImageFolder, in one run.

Both read the same generated ImageFolder tree of real photo crops (scikit-learn's sample images,
saved as JPEG in a temporary folder), with the same number of workers, batch size, shuffling and
resize (PIL bilinear to ``--size``), and produce uint8 batches:

* ours: ``StreamImageDataModule(...).train_dataloader()`` (JPEG decoded at a reduced DCT scale
  with ``Image.draft`` when the target is smaller, uint8 batches);
* torchvision: ``ImageFolder(root, transform=Compose([Resize((s, s)), PILToTensor()]))`` with a
  ``DataLoader(shuffle=True)``.

An epoch is timed from creating the loader's iterator (worker start included, for both) to the last
batch; the median over ``--repeats`` epochs, measured round-robin so that load from other processes
hits both alike, gives images/s. It prints the ratio ours/torchvision (target >= 1.0x); no assert.

Usage::

    python benchmarks/stream.py                          # 2000 images 256x256 -> 64, 4 workers
    python benchmarks/stream.py --images 5000 --source-size 320 --size 96 --workers 2
    python benchmarks/stream.py --format png             # lossless files: no reduced-scale decode
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from plugins.data.stream import StreamImageDataModule, default_num_workers  # noqa: E402


def make_tree(root: Path, n: int, side: int, fmt: str = "jpg", classes: int = 10) -> None:
    """``n`` JPEG (or PNG) crops (``side`` x ``side``) of scikit-learn's two sample photos, in class folders."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images  # (427, 640, 3) each
    rng = np.random.default_rng(0)
    for i in range(n):
        p = photos[i % 2]
        s = min(side, p.shape[0], p.shape[1])
        y, x = rng.integers(0, p.shape[0] - s + 1), rng.integers(0, p.shape[1] - s + 1)
        im = Image.fromarray(p[y : y + s, x : x + s])
        if s != side:
            im = im.resize((side, side), Image.BILINEAR)
        d = root / f"class{i % classes:02d}"
        d.mkdir(parents=True, exist_ok=True)
        im.save(d / f"{i:06d}.{fmt}", **({"quality": 90} if fmt == "jpg" else {}))


def loaders(root: Path, size: int, batch: int, workers: int) -> dict:
    import torch
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    dm = StreamImageDataModule(
        root,
        val_fraction=0,
        image_size=size,
        batch_size=batch,
        num_workers=workers,
        drop_last=False,
        pin_memory=False,
    )
    tv = ImageFolder(
        str(root),
        transform=transforms.Compose(
            [transforms.Resize((size, size), antialias=True), transforms.PILToTensor()]
        ),
    )
    tv_loader = torch.utils.data.DataLoader(
        tv, batch_size=batch, shuffle=True, num_workers=workers, drop_last=False
    )
    ours = dm.train_dataloader()
    return {"ours": ours, "torchvision": tv_loader}


def epoch_time(loader, epoch: int) -> tuple[float, int]:
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    t = time.perf_counter()
    n = 0
    for x, _ in loader:
        n += len(x)
    return time.perf_counter() - t, n


def loader_times(
    root: Path, images: int, size: int, batch: int, workers: int, repeats: int
) -> dict[str, list[float]]:
    """Epoch times (s) of each loader over ``repeats`` epochs, taking turns epoch by epoch, so that
    a change in the machine's load hits both alike; ``images / median`` is the throughput."""
    ls = loaders(root, size, batch, workers)
    times: dict[str, list[float]] = {k: [] for k in ls}
    for epoch in range(repeats):
        for name, loader in ls.items():
            dt, n = epoch_time(loader, epoch)
            assert n == images, (name, n)  # a correctness check, not a timing one
            times[name].append(dt)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--source-size", type=int, default=256, help="side of the JPEG files")
    ap.add_argument("--size", type=int, default=64, help="side after the resize")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--workers", type=int, default=default_num_workers())
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--format", choices=("jpg", "png"), default="jpg", help="png: no reduced-scale decoding"
    )
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "tree"
        t = time.perf_counter()
        make_tree(root, args.images, args.source_size, args.format)
        print(
            f"tree: {args.images} {args.format.upper()} {args.source_size}x{args.source_size} in 10 classes "
            f"({time.perf_counter() - t:.1f} s to write); resize to {args.size}, batch {args.batch}, "
            f"{args.workers} workers, {args.repeats} epochs each (median), round-robin"
        )
        times = loader_times(root, args.images, args.size, args.batch, args.workers, args.repeats)
        rate = {k: args.images / statistics.median(v) for k, v in times.items()}
        print("\n| loader | images/s | epoch times (s) |\n|---|---:|---|")
        for k, v in times.items():
            print(f"| {k} | {rate[k]:.0f} | {', '.join(f'{x:.2f}' for x in v)} |")
        print(
            f"\nratio ours/torchvision: {rate['ours'] / rate['torchvision']:.2f}x (target >= 1.0x)"
        )


if __name__ == "__main__":
    main()
