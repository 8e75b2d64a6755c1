"""``contrastive-plugins``: list, run, demo, reproduce, predict and bench the registered methods.

Bad input (a missing data path, wrong channel count, NaN in the data, an unknown method) ends with one
sentence on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from plugins.errors import UserInputError
from plugins.registry import MethodSpec, available_methods, get_method

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"


def _parse_options(pairs: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserInputError(f"--set expects key=value, got '{pair}'.")
        options[key] = yaml.safe_load(value)
    return options


def _device(name: str | None) -> Any:
    import torch

    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserInputError(f"unknown device '{name}'; use cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserInputError(
            f"device '{name}' requested but CUDA is not available on this machine."
        )
    return device


def _context(spec: MethodSpec, args: argparse.Namespace, demo: bool) -> Any:
    from plugins.reporting import RunContext, RunDir

    # names without a path separator ("digits", "cora", ...) are data-set names the method resolves
    looks_like_path = args.data is not None and (
        "/" in args.data or "\\" in args.data or args.data.startswith(".")
    )
    if looks_like_path and not Path(args.data).exists():
        raise UserInputError(f"data path {args.data} does not exist.")
    if args.threads is not None:
        import torch

        if args.threads < 1:
            raise UserInputError(f"--threads must be at least 1, got {args.threads}.")
        torch.set_num_threads(args.threads)
    return RunContext(
        method=spec.name,
        run_dir=RunDir(args.out, spec.name),
        data=args.data,
        epochs=args.epochs,
        device=_device(args.device),
        seed=args.seed,
        demo=demo,
        options=_parse_options(args.set),
        progress=not args.no_progress,
        threads=args.threads,
    )


def cmd_list(args: argparse.Namespace) -> int:
    specs = available_methods()
    if not specs:
        print("no methods registered (is the package installed? pip install -e .)")
        return 1
    width = max(len(n) for n in specs)
    for name, s in specs.items():
        print(f"{name:<{width}}  {s.domain} [{s.framework}]")
        print(f"{'':<{width}}  paper: {s.paper}")
        print(f"{'':<{width}}  default data: {s.default_data}")
    return 0


def _print_metrics(metrics: dict[str, Any]) -> None:
    for k, v in metrics.items():
        print(f"  {k}: {v:.4f}" if isinstance(v, float) else f"  {k}: {v}")


def cmd_run(args: argparse.Namespace) -> int:
    spec = get_method(args.method)
    ctx = _context(spec, args, demo=args.demo)
    metrics = spec.load_run()(ctx)
    ctx.run_dir.save_metrics(metrics)
    print(f"{spec.name}: results in {ctx.run_dir.path}")
    _print_metrics(metrics)
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    spec = get_method(args.method)
    ctx = _context(spec, args, demo=False)
    metrics = spec.load_reproduce()(ctx)
    ctx.run_dir.save_metrics(metrics)
    table = ctx.run_dir.path / "table.md"
    print(f"{spec.name} reproduction: results in {ctx.run_dir.path}")
    if table.exists():
        print(table.read_text())
    else:
        _print_metrics(metrics)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from plugins.reporting import markdown_table

    specs = available_methods()
    if args.methods:
        wanted = args.methods.split(",")
        unknown = [m for m in wanted if m not in specs]
        if unknown:
            raise UserInputError(
                f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(specs)}."
            )
        specs = {m: specs[m] for m in wanted}
    rows, failed = [], 0
    for name, spec in specs.items():
        print(f"== {name}: {spec.default_data}", flush=True)
        args.data = None
        start = time.perf_counter()
        try:
            ctx = _context(spec, args, demo=True)
            metrics = spec.load_run()(ctx)
            ctx.run_dir.save_metrics(metrics)
            key = spec.demo_metric or next(iter(metrics), "")
            value = metrics.get(key)
            rows.append(
                {
                    "method": name,
                    "data": spec.default_data.split(" (")[0],
                    "metric": key,
                    "value": round(float(value), 4) if value is not None else None,
                    "seconds": round(time.perf_counter() - start, 1),
                    "run dir": str(ctx.run_dir.path),
                }
            )
        except Exception as e:  # one failing method must not hide the others' results
            failed += 1
            rows.append(
                {
                    "method": name,
                    "data": spec.default_data.split(" (")[0],
                    "metric": "FAILED",
                    "value": f"{type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''}",
                    "seconds": round(time.perf_counter() - start, 1),
                    "run dir": "",
                }
            )
    print()
    print(markdown_table(rows))
    return 1 if failed else 0


def cmd_predict(args: argparse.Namespace) -> int:
    spec = get_method(args.method)
    target = spec.extra.get("predict")
    if target is None:
        raise UserInputError(f"method '{spec.name}' has no predict command.")
    from plugins.registry import _load

    return int(_load(target)(args.args) or 0)


def cmd_bench(args: argparse.Namespace) -> int:
    if not BENCH_DIR.is_dir():
        raise UserInputError(
            "benchmarks live in the source checkout (benchmarks/); run this from a git clone."
        )
    scripts = sorted(p for p in BENCH_DIR.glob("*.py") if not p.name.startswith("_"))
    if args.topic:
        scripts = [p for p in scripts if p.stem == args.topic]
        if not scripts:
            raise UserInputError(f"no benchmark named '{args.topic}' in {BENCH_DIR}.")
    status = 0
    for script in scripts:
        print(f"== {script.stem}", flush=True)
        status |= subprocess.call([sys.executable, str(script), *args.args])
    return status


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="contrastive-plugins", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="registered methods").set_defaults(func=cmd_list)

    def add_run_flags(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--data", help="data path (default: the method's embedded real data)")
        sp.add_argument("--epochs", type=int, help="training epochs (default: the method's)")
        sp.add_argument(
            "--device", default="auto", help="cpu, cuda, cuda:N (default: cuda when available)"
        )
        sp.add_argument(
            "--out", default="runs", help="parent folder of run directories (default: runs)"
        )
        sp.add_argument("--seed", type=int, default=0)
        sp.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="method option, repeatable",
        )
        sp.add_argument("--no-progress", action="store_true", help="hide progress bars")
        sp.add_argument(
            "--threads",
            type=int,
            help="torch CPU threads (default: torch's; 1 is often faster on a busy machine)",
        )

    for name, func, help_ in (
        ("run", cmd_run, "train one method"),
        ("reproduce", cmd_reproduce, "small-scale reproduction of the paper's claim"),
    ):
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("method")
        add_run_flags(sp)
        if name == "run":
            sp.add_argument("--demo", action="store_true", help="a short run")
        sp.set_defaults(func=func)

    sp = sub.add_parser("demo", help="every method briefly on its embedded data; one table")
    add_run_flags(sp)
    sp.add_argument("--methods", help="comma-separated subset")
    sp.set_defaults(func=cmd_demo)

    sp = sub.add_parser(
        "predict",
        help="method-specific inference, e.g. predict glcnet --checkpoint C IN.tif OUT.tif",
    )
    sp.add_argument("method")
    sp.add_argument("args", nargs=argparse.REMAINDER)
    sp.set_defaults(func=cmd_predict)

    sp = sub.add_parser("bench", help="run the benchmarks (source checkout)")
    sp.add_argument("topic", nargs="?")
    sp.add_argument("args", nargs=argparse.REMAINDER)
    sp.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserInputError as e:
        print(f"contrastive-plugins: error: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"contrastive-plugins: error: file not found: {e.filename or e}.", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("contrastive-plugins: interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
