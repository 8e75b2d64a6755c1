"""Cost of collapse monitoring relative to training (target: under 2 % at the default frequency).

Times, in the same process and on the same model, (a) a DirectCLR training step and (b) one
collapse check (probe forward + effective rank + spectrum of representation and embedding), each
as the median of several repetitions (medians resist the noise of a shared CPU), and prints

    overhead = check_time / (every_n_steps * step_time)

Also times the statistics alone at ResNet-18/50 widths (512, 2048), i.e. what the check costs
beyond the probe forward when the backbone is large.

    python benchmarks/monitoring.py                   # TinyResNet, 16x16, batch 128 (CPU scale)
    python benchmarks/monitoring.py --arch resnet18 --size 32 --batch 256 --probe 512
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from plugins.backbones import TinyResNet, small_resnet
from plugins.methods.directclr import DirectCLR
from plugins.methods.directclr.train import AsymmetricAugment
from plugins.monitoring import DEFAULT_EVERY_N_STEPS, CollapseTracker, collapse_stats


def _median_time(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--arch",
        default="tiny16",
        help="tiny16 (widths 16-32-64), tiny (32-64-128) or a torchvision ResNet",
    )
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--probe", type=int, default=512)
    p.add_argument("--every", type=int, default=DEFAULT_EVERY_N_STEPS)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    backbone, dim = (
        (TinyResNet(3, (16, 32, 64)), 64) if args.arch == "tiny16" else small_resnet(3, args.arch)
    )
    model = DirectCLR(backbone, mode="simclr", feat_dim=dim)  # simclr mode: both r and z differ
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    augment = AsymmetricAugment(args.size)
    images = torch.rand(args.batch, 3, args.size, args.size)
    probe = torch.rand(args.probe, 3, args.size, args.size)
    trackers = {on: CollapseTracker(args.every, on) for on in ("representation", "embedding")}

    def train_step() -> None:
        x1, x2 = augment(images)
        loss = model(x1, x2)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step_counter = iter(range(10**9))

    def check() -> None:
        model.eval()
        with torch.no_grad():
            r = model.backbone(probe)
            s = next(step_counter)
            trackers["representation"].update(s, r)
            trackers["embedding"].update(s, model.project(r))
        model.train()

    model.train()
    t_step = _median_time(train_step, args.reps)
    t_check = _median_time(check, args.reps)
    overhead = t_check / (args.every * t_step)
    print(
        f"arch={args.arch} size={args.size} batch={args.batch} probe={args.probe} every={args.every} threads={args.threads}"
    )
    print(f"train step       {t_step * 1e3:9.1f} ms (median of {args.reps})")
    print(f"collapse check   {t_check * 1e3:9.1f} ms (r and z, probe forward included)")
    print(
        f"overhead         {100 * overhead:9.2f} % of training time at every_n_steps={args.every}"
    )
    print(f"check / step     {t_check / t_step:9.2f} x")

    for d in (512, 2048):
        z = torch.randn(max(args.probe, d + 1), d)
        t_stats = _median_time(lambda z=z: collapse_stats(z), 3)
        print(
            f"stats only D={d:<5d} N={len(z):<5d} {t_stats * 1e3:9.1f} ms  = {t_stats / t_step:6.2f} x this train step"
        )


if __name__ == "__main__":
    main()
