"""Training-engine benchmarks (not tests): the Lightning path against plain peers, in one run.

1. **SimCLR training throughput** (images/s) of :class:`SimCLRTask` under a ``lightning.Trainer``
   (CPU, ``32-true``, no logger, no progress bar, no checkpointing) against a plain PyTorch loop built
   from lightly's ``NTXentLoss`` and ``SimCLRProjectionHead``. Both use the same encoder
   (:func:`plugins.backbones.small_resnet`), the same projector shape (Linear-ReLU-Linear, as
   SimCLR v1 and our ``SimCLR``: ``SimCLRProjectionHead(..., batch_norm=False)``), the same
   augmentation module (SimCLRTask's default :class:`plugins.data.TwoViewAugment`), the same
   optimiser (Adam + per-step cosine schedule), batch size, temperature, torch threads and the same
   images held in memory (CIFAR-10 from ``../shared/data/cifar10``, or scikit-learn digits), fed
   by the same kind of ``DataLoader``. Target: ours / lightly >= 0.95x.
2. **Data loading throughput** of :class:`StreamImageDataModule` against torchvision's
   ``ImageFolder`` + ``DataLoader`` on a JPEG ImageFolder tree written to a temporary folder, same
   workers, batch size and resize, both producing uint8 batches (the measurement of
   ``benchmarks/stream.py``, imported from there). Target: ours / torchvision >= 1.0x.
3. **Mixed precision**: step time of SimCLRTask with ``precision="bf16-mixed"`` against
   ``"32-true"``, both at ``--bf16-batch`` (reported only: on a CPU without AVX512-BF16/AMX,
   PyTorch runs bf16 convolutions through its slow reference kernels, about 15x slower; use
   ``--bf16-batch`` = ``--batch`` on a GPU or a bf16-capable CPU).

Each training contender starts from the same seed, runs ``--warmup`` steps, then ``--steps`` timed
steps (from the end of the last warm-up step to the end of the last step, data loading, optimiser
and scheduler included; for Lightning every hook and ``self.log`` too). The contenders take turns
repeat by repeat (``--repeats``), so that a change in the machine's load hits them alike, and the
median is reported. Ratios are printed as a table; no assert.

Usage::

    python benchmarks/engine.py                 # tiny ResNet, CIFAR-10 32 px, batch 32; 800 JPEGs
    python benchmarks/engine.py --arch resnet18 --batch 256 --bf16-batch 256 --steps 20 --threads 4
    python benchmarks/engine.py --skip-loading --json engine.json
    python benchmarks/engine.py --images 5000 --source-size 320 --size 96 --workers 4
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.stream import loader_times, make_tree  # noqa: E402
from plugins.backbones import small_resnet  # noqa: E402
from plugins.data import TwoViewAugment  # noqa: E402
from plugins.data.stream import default_num_workers  # noqa: E402
from plugins.errors import UserInputError  # noqa: E402
from plugins.methods.simclr.config import SimCLRConfig  # noqa: E402

CFG = SimCLRConfig()
PLAIN = "lightly plain loop"
TASK32 = "SimCLRTask 32-true"
TASK16 = "SimCLRTask bf16-mixed"


# ----------------------------------------------------------------------------- data
def images_in_memory(data: str, n: int) -> torch.Tensor:
    """``n`` images (N, C, 32, 32) float in [0, 1]: the shared CIFAR-10 batch, or digits at 32 px."""
    from plugins.data import load_cifar10, load_digits

    if data == "cifar10":
        try:
            x = load_cifar10(limit=n).images
        except UserInputError as e:
            print(f"CIFAR-10 not available ({e}); using scikit-learn digits instead")
            data = "digits"
    if data == "digits":
        x = load_digits(size=32).images
    if len(x) < n:  # repeat the set when it is smaller than the steps need
        x = x.repeat((n + len(x) - 1) // len(x), 1, 1, 1)
    return x[:n].contiguous()


def make_loader(x: torch.Tensor, batch: int, seed: int) -> DataLoader:
    """The loader both training contenders read: in-memory, shuffled, in the main process."""
    return DataLoader(
        TensorDataset(x),
        batch_size=batch,
        shuffle=True,
        drop_last=True,
        num_workers=0,
        generator=torch.Generator().manual_seed(seed),
    )


# ----------------------------------------------------------------------------- training contenders
def plain_ends(x: torch.Tensor, args: argparse.Namespace, seed: int) -> list[float]:
    """End time of each step of the plain loop: lightly's head and loss, our encoder and views."""
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead

    torch.manual_seed(seed)
    encoder, dim = small_resnet(x.shape[1], args.arch)
    head = SimCLRProjectionHead(dim, dim, CFG.projection_dim, batch_norm=False)
    model = torch.nn.Sequential(encoder, head)
    criterion = NTXentLoss(temperature=CFG.temperature)
    augment = TwoViewAugment(x.shape[-1], scale=CFG.crop_scale)
    total = args.warmup + args.steps
    opt = torch.optim.Adam(model.parameters(), lr=CFG.lr, weight_decay=CFG.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    model.train()
    ends = []
    for (images,) in make_loader(x, args.batch, seed):
        x1, x2 = augment(images)
        z1, z2 = model(torch.cat([x1, x2])).chunk(2)
        loss = criterion(z1, z2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        ends.append(time.perf_counter())
        if len(ends) == total:
            break
    return ends


def task_ends(x: torch.Tensor, args: argparse.Namespace, seed: int, precision: str) -> list[float]:
    """End time of each step of SimCLRTask under ``lightning.Trainer`` (CPU, one process)."""
    from lightning.pytorch import Callback, Trainer

    from plugins.methods.simclr.task import SimCLRTask

    class StepClock(Callback):
        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.ends.append(time.perf_counter())

    torch.manual_seed(seed)
    task = SimCLRTask(in_channels=x.shape[1], arch=args.arch)
    clock = StepClock()
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        precision=precision,
        max_steps=args.warmup + args.steps,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[clock],
    )
    trainer.fit(task, make_loader(x, args.batch, seed))
    return clock.ends


Contender = Callable[[torch.Tensor, argparse.Namespace, int], list[float]]


def training_times(
    args: argparse.Namespace, contenders: dict[str, Contender], batch: int, steps: int
) -> dict[str, list[float]]:
    """Seconds for ``steps`` steps after the warm-up, per contender and repeat (round-robin)."""
    x = images_in_memory(args.data, batch * (args.warmup + steps))
    run_args = argparse.Namespace(**{**vars(args), "batch": batch, "steps": steps})
    print(
        f"{', '.join(contenders)}: {args.arch} encoder, {tuple(x.shape[1:])} {args.data} images in "
        f"memory, batch {batch}, {args.warmup} warm-up + {steps} timed steps, {args.repeats} repeats "
        f"(median), round-robin, {torch.get_num_threads()} torch thread(s)"
    )
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for r in range(args.repeats):
        for name, run in contenders.items():
            ends = run(x, run_args, r)
            assert len(ends) == args.warmup + steps, (name, len(ends))
            times[name].append(ends[-1] - ends[args.warmup - 1])
    return times


def print_times(times: dict[str, list[float]], batch: int, steps: int) -> dict[str, dict]:
    """Print a table of the contenders' throughput; return it as a dict."""
    out = {}
    print("\n| contender | images/s | ms/step | timed seconds per repeat |\n|---|---:|---:|---|")
    for k, v in times.items():
        med = statistics.median(v)
        out[k] = {"images_per_s": steps * batch / med, "step_s": med / steps, "times_s": v}
        print(
            f"| {k} | {out[k]['images_per_s']:.0f} | {1000 * out[k]['step_s']:.0f} | "
            f"{', '.join(f'{t:.2f}' for t in v)} |"
        )
    print()
    return out


# ----------------------------------------------------------------------------- report
def markdown(rows: list[list[str]], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    g = p.add_argument_group("training (1 and 3)")
    g.add_argument("--arch", default="tiny", help="'tiny' or a torchvision ResNet name")
    g.add_argument("--data", choices=("cifar10", "digits"), default="cifar10")
    g.add_argument("--batch", type=int, default=32)
    g.add_argument("--warmup", type=int, default=1, help="untimed steps per contender and repeat")
    g.add_argument("--steps", type=int, default=4, help="timed steps per contender and repeat")
    g.add_argument("--repeats", type=int, default=5)
    g.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: on a shared machine OpenMP spin-waits distort timings)",
    )
    g.add_argument(
        "--bf16-batch",
        type=int,
        default=8,
        help="batch of 3 (both precisions); small by default: CPUs without bf16 instructions "
        "run bf16 convolutions about 15x slower",
    )
    g.add_argument("--bf16-steps", type=int, default=1, help="timed steps of 3")
    g.add_argument("--skip-bf16", action="store_true", help="skip 3 (bf16-mixed)")
    g.add_argument("--skip-training", action="store_true", help="skip 1 and 3")
    g = p.add_argument_group("data loading (2)")
    g.add_argument("--images", type=int, default=800)
    g.add_argument("--source-size", type=int, default=256, help="side of the JPEG files")
    g.add_argument("--size", type=int, default=64, help="side after the resize")
    g.add_argument("--load-batch", type=int, default=128)
    g.add_argument("--workers", type=int, default=default_num_workers())
    g.add_argument("--load-repeats", type=int, default=3)
    g.add_argument("--skip-loading", action="store_true", help="skip 2")
    p.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    args = p.parse_args(argv)
    if min(args.warmup, args.steps, args.repeats, args.bf16_steps, args.bf16_batch) < 1:
        p.error("--warmup, --steps, --repeats, --bf16-steps and --bf16-batch must be at least 1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # for the loader workers
    torch.set_num_threads(args.threads)
    warnings.filterwarnings(
        "ignore", message=".*(does not have many workers|GPU available|LeafSpec).*"
    )
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
    start = time.perf_counter()
    result: dict = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    }
    rows: list[list[str]] = []

    if not args.skip_training:
        times = training_times(
            args,
            {PLAIN: plain_ends, TASK32: partial(task_ends, precision="32-true")},
            args.batch,
            args.steps,
        )
        res = result["training"] = print_times(times, args.batch, args.steps)
        ours, peer = res[TASK32]["images_per_s"], res[PLAIN]["images_per_s"]
        result["ratio_task_vs_lightly"] = ours / peer
        rows.append(
            [
                "1. SimCLR training, images/s",
                f"{TASK32}: {ours:.0f}",
                f"{PLAIN}: {peer:.0f}",
                f"{ours / peer:.2f}x",
                ">= 0.95x",
                "yes" if ours / peer >= 0.95 else "no",
            ]
        )

    if not args.skip_loading:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "tree"
            t = time.perf_counter()
            make_tree(root, args.images, args.source_size, "jpg")
            print(
                f"loading: {args.images} JPEG {args.source_size}x{args.source_size} in 10 classes "
                f"({time.perf_counter() - t:.1f} s to write); resize to {args.size}, batch "
                f"{args.load_batch}, {args.workers} workers, {args.load_repeats} epochs each "
                "(median), round-robin"
            )
            lt = loader_times(
                root, args.images, args.size, args.load_batch, args.workers, args.load_repeats
            )
        lrate = {k: args.images / statistics.median(v) for k, v in lt.items()}
        print("\n| loader | images/s | epoch seconds |\n|---|---:|---|")
        for k, v in lt.items():
            print(f"| {k} | {lrate[k]:.0f} | {', '.join(f'{t:.2f}' for t in v)} |")
        print()
        ratio = lrate["ours"] / lrate["torchvision"]
        result["loading"] = {k: {"images_per_s": lrate[k], "epoch_s": lt[k]} for k in lt}
        result["ratio_stream_vs_torchvision"] = ratio
        rows.append(
            [
                "2. data loading, images/s",
                f"StreamImageDataModule: {lrate['ours']:.0f}",
                f"torchvision ImageFolder: {lrate['torchvision']:.0f}",
                f"{ratio:.2f}x",
                ">= 1.0x",
                "yes" if ratio >= 1.0 else "no",
            ]
        )

    if not args.skip_training and not args.skip_bf16:
        times = training_times(
            args,
            {
                TASK32: partial(task_ends, precision="32-true"),
                TASK16: partial(task_ends, precision="bf16-mixed"),
            },
            args.bf16_batch,
            args.bf16_steps,
        )
        res = result["precision"] = print_times(times, args.bf16_batch, args.bf16_steps)
        s16, s32 = res[TASK16]["step_s"], res[TASK32]["step_s"]
        result["ratio_bf16_vs_32_step_time"] = s16 / s32
        rows.append(
            [
                f"3. SimCLRTask step time (batch {args.bf16_batch}), s",
                f"bf16-mixed: {s16:.3f}",
                f"32-true: {s32:.3f}",
                f"{s16 / s32:.2f}x",
                "reported",
                "-",
            ]
        )

    print(f"### Summary ({time.perf_counter() - start:.0f} s)\n")
    print(markdown(rows, ["measure", "ours", "peer", "ratio ours/peer", "target", "met"]))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
