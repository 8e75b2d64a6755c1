"""Forward+backward time and peak memory of our losses against peer libraries, in one run.

Compares, on the same inputs (batch B of pairs, dim 128):

* ``nt_xent`` vs lightly ``NTXentLoss`` and MONAI ``ContrastiveLoss`` (both SimCLR NT-Xent, t = 0.5),
* ``sup_con`` vs pytorch-metric-learning ``SupConLoss`` (t = 0.1, 2 views, 10 classes),

and prints Markdown tables of ratios ours/peer (below 1 means ours is faster or smaller), then a
stability table at temperature 0.005 (is the loss and its gradient finite?).

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` above the inputs; on CPU the rise of the
process's peak resident set (``VmHWM`` after resetting it through ``/proc/self/clear_refs``, with
``malloc_trim`` first so freed heap pages do not hide new allocations). CPU numbers are therefore
rounded to pages and include allocator slack; ratios are what matter. Timings are medians over
``--repeats`` runs, measured round-robin so that load from other processes hits every contender alike.

Usage::

    python benchmarks/losses.py                       # B = 256, 1024, 4096
    python benchmarks/losses.py --sizes 256 1024 --repeats 5
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from plugins.losses import nt_xent, sup_con  # noqa: E402

DIM = 128
NUM_CLASSES = 10
# MONAI builds a (2B, 2B, D) tensor for its cosine similarities; skip it beyond this many bytes
MONAI_MAX_BYTES = 1 * 2**30


# ----------------------------------------------------------------------------- contenders
def contenders(t_pair: float, t_sup: float) -> dict[str, dict[str, Callable | None]]:
    """{group: {name: fn(z1, z2, labels) -> loss}}; a peer that is not installed is None."""
    groups: dict[str, dict[str, Callable | None]] = {
        "nt_xent": {"ours": lambda a, b, y: nt_xent(a, b, t_pair)},
        "sup_con": {"ours": lambda a, b, y: sup_con(torch.stack([a, b], 1), y, t_sup, t_sup)},
    }
    try:
        from lightly.loss import NTXentLoss

        lightly_loss = NTXentLoss(temperature=t_pair)
        groups["nt_xent"]["lightly NTXentLoss"] = lambda a, b, y: lightly_loss(a, b)
    except ImportError:
        groups["nt_xent"]["lightly NTXentLoss"] = None
    try:
        from monai.losses import ContrastiveLoss

        monai_loss = ContrastiveLoss(temperature=t_pair)
        groups["nt_xent"]["MONAI ContrastiveLoss"] = lambda a, b, y: monai_loss(a, b)
    except ImportError:
        groups["nt_xent"]["MONAI ContrastiveLoss"] = None
    try:
        from pytorch_metric_learning.losses import SupConLoss

        pml_loss = SupConLoss(temperature=t_sup)
        groups["sup_con"]["pml SupConLoss"] = lambda a, b, y: pml_loss(
            torch.cat([a, b]), y.repeat(2)
        )
    except ImportError:
        groups["sup_con"]["pml SupConLoss"] = None
    return groups


def too_big(name: str, batch: int) -> bool:
    return name.startswith("MONAI") and (2 * batch) ** 2 * DIM * 4 > MONAI_MAX_BYTES


# ----------------------------------------------------------------------------- measurement
_LIBC = ctypes.CDLL("libc.so.6") if sys.platform.startswith("linux") else None


def _proc_kib(key: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{key}:\s+(\d+)", text).group(1))


def peak_memory(fn: Callable[[], None], device: torch.device) -> float | None:
    """Peak bytes allocated while ``fn`` runs, above what was allocated before (MiB)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    if _LIBC is None:
        return None
    _LIBC.malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current VmRSS
    before = _proc_kib("VmRSS")
    fn()
    return (_proc_kib("VmHWM") - before) / 1024


def step(fn: Callable, z1: torch.Tensor, z2: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        z1.grad = z2.grad = None
        loss = fn(z1, z2, y)
        loss.backward()

    return run


def timed(run: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def inputs(batch: int, device: torch.device, seed: int = 0, noise: float = 0.5):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(batch, DIM, generator=g).to(device).requires_grad_(True)
    z2 = z1.detach() + noise * torch.randn(batch, DIM, generator=g).to(device)
    z2.requires_grad_(True)
    y = torch.randint(0, NUM_CLASSES, (batch,), generator=g).to(device)
    return z1, z2, y


def bench_size(batch: int, groups, device: torch.device, repeats: int) -> list[dict]:
    z1, z2, y = inputs(batch, device)
    runs = {
        (g, name): step(fn, z1, z2, y)
        for g, members in groups.items()
        for name, fn in members.items()
        if fn is not None and not too_big(name, batch)
    }
    times: dict[tuple[str, str], list[float]] = {k: [] for k in runs}
    for r in runs.values():  # warm-up: one-time initialisation is nobody's peak
        r()
    mem = {k: peak_memory(r, device) for k, r in runs.items()}
    for _ in range(repeats):
        for k, r in runs.items():
            times[k].append(timed(r, device))
    rows = []
    for g, members in groups.items():
        ours = (g, "ours")
        for name in members:
            if name == "ours":
                continue
            key = (g, name)
            row = {"loss": g, "peer": name, "B": batch}
            if members[name] is None:
                row["note"] = "not installed"
            elif key not in runs:
                row["note"] = (
                    f"skipped: needs a {(2 * batch) ** 2 * DIM * 4 / 2**30:.0f} GiB (2B, 2B, D) tensor"
                )
            else:
                t_o, t_p = statistics.median(times[ours]), statistics.median(times[key])
                row.update(ours_ms=1e3 * t_o, peer_ms=1e3 * t_p, time_ratio=t_o / t_p)
                if mem[ours] is not None and mem[key]:
                    row.update(
                        ours_mib=mem[ours], peer_mib=mem[key], mem_ratio=mem[ours] / mem[key]
                    )
            rows.append(row)
    return rows


def stability(device: torch.device, temperature: float = 0.005, batch: int = 256) -> list[dict]:
    rows = []
    for g, members in contenders(temperature, temperature).items():
        for name, fn in members.items():
            if fn is None:
                continue
            # unrelated views: far-apart positives make exp(s / t) over- or underflow
            z1, z2, y = inputs(batch, device, seed=1, noise=10.0)
            loss = fn(z1, z2, y)
            loss.backward()
            grads_finite = bool(torch.isfinite(z1.grad).all() and torch.isfinite(z2.grad).all())
            rows.append(
                {
                    "loss": g,
                    "implementation": name,
                    "value": f"{float(loss.detach()):.4g}",
                    "finite loss": "yes" if bool(torch.isfinite(loss)) else "NO (NaN/inf)",
                    "finite gradient": "yes" if grads_finite else "NO (NaN/inf)",
                }
            )
    return rows


def markdown(rows: list[dict], columns: list[str]) -> str:
    def fmt(v) -> str:
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: on a shared machine OpenMP spin-waits distort timings)",
    )
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} dim={DIM} "
        f"repeats={args.repeats} (ratio = ours / peer; < 1 is better for ours)\n"
    )
    groups = contenders(t_pair=0.5, t_sup=0.1)
    rows = []
    for b in args.sizes:
        rows += bench_size(b, groups, device, args.repeats)
    cols = [
        "loss",
        "peer",
        "B",
        "ours_ms",
        "peer_ms",
        "time_ratio",
        "ours_mib",
        "peer_mib",
        "mem_ratio",
        "note",
    ]
    print("### Forward + backward, time and peak memory\n")
    print(markdown(rows, cols))
    print("\n### Stability at temperature 0.005 (B = 256)\n")
    print(
        markdown(
            stability(device), ["loss", "implementation", "value", "finite loss", "finite gradient"]
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
