"""``contrastive-plugins``: list, run, demo, reproduce, predict and bench the registered methods.

Bad input (a missing data path, wrong channel count, NaN in the data, an unknown method) ends with one
sentence on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from plugins.engine_settings import (
    PRECISIONS,
    STRATEGIES,
    EngineSettings,
    WorkerFinished,
    is_worker,
    unsupported_flags,
)
from plugins.errors import TrainingDiverged, UserInputError
from plugins.registry import MethodSpec, available_methods, get_method

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"


def _int_at_least(low: int) -> Any:
    """argparse type: a whole number of at least ``low``, else one line naming the flag."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
        if value < low:
            bound = "0 or more" if low == 0 else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value

    return parse


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
    if device.type not in ("cpu", "cuda"):
        raise UserInputError(f"unsupported device '{name}'; use cpu, cuda or cuda:N.")
    return device


def _context(spec: MethodSpec, args: argparse.Namespace, demo: bool, command: str) -> Any:
    from plugins.checkpoint import parse_every
    from plugins.options import parse_pairs
    from plugins.reporting import RunContext, RunDir

    # names without a path separator ("digits", "cora", ...) are data-set names the method resolves
    looks_like_path = args.data is not None and (
        "/" in args.data or "\\" in args.data or args.data.startswith(".")
    )
    if looks_like_path and not Path(args.data).exists():
        raise UserInputError(f"data path {args.data} does not exist.")
    resume = getattr(args, "resume", None)
    if resume is not None and not Path(resume).is_file():
        what = "is a folder, not a checkpoint file" if Path(resume).is_dir() else "does not exist"
        raise UserInputError(f"--resume file {resume} {what}.")
    every = parse_every(getattr(args, "checkpoint_every", None) or "2m")
    device = _device(args.device)
    engine = _engine(spec, args, device)
    worker = is_worker()
    ctx = RunContext(
        method=spec.name,
        # a copy launched for ddp trains beside rank 0 and writes nothing of its own
        run_dir=RunDir(path=Path(tempfile.mkdtemp(prefix="rank-")))
        if worker
        else RunDir(args.out, spec.name),
        data=args.data,
        epochs=args.epochs,
        device=device,
        seed=args.seed,
        demo=demo,
        options=parse_pairs(args.set),
        progress=not args.no_progress and not worker,
        threads=args.threads,
        option_set=spec.option_set(command),
        command=command,
        resume=resume,
        checkpoint_every=every,
        engine=engine,
    )
    if resume is not None:  # a corrupt or foreign file is one sentence now, not after data loading
        from plugins.checkpoint import load_checkpoint

        load_checkpoint(resume, spec.name, what="--resume file")
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    return ctx


def _engine(spec: MethodSpec, args: argparse.Namespace, device: Any) -> EngineSettings:
    """The engine flags of ``run``/``reproduce``; one sentence for a flag the method does not take
    or a combination this machine cannot run."""
    settings = EngineSettings(
        devices=getattr(args, "devices", None) or 1,
        strategy=getattr(args, "strategy", None) or "auto",
        precision=getattr(args, "precision", None) or "32-true",
        accumulate=getattr(args, "accumulate", None) or 1,
    )
    refused = unsupported_flags(spec.engine, settings)
    if refused:
        takes = ", ".join(f"--{f}" for f in spec.engine) or "none of the engine flags"
        raise UserInputError(
            f"{spec.name} does not take {', '.join(f'--{f}' for f in refused)}: it trains with "
            f"its own loop ({spec.framework}); it takes {takes}."
        )
    settings.check(device)
    return settings


def _execute(spec: MethodSpec, ctx: Any, command: str, fn: Any) -> dict[str, Any]:
    """Run ``fn(ctx)`` inside the run folder's life cycle: nothing is left when it fails before
    work starts; otherwise ``metrics.json`` gets ``status`` and ``config.yaml`` what was used."""
    run_dir = ctx.run_dir
    status, error = "failed", None
    try:
        with run_dir.activate():
            metrics = fn(ctx)
        run_dir.save_metrics(metrics)
        status = "completed"
        return metrics
    except KeyboardInterrupt as e:
        status = "terminated" if isinstance(e, Terminated) else "interrupted"
        raise
    except UserInputError as e:
        error = str(e)
        raise
    except Exception as e:
        error = f"{type(e).__name__}: {e}"
        raise
    finally:
        if run_dir.started or status == "completed":
            run_dir.save_config(
                {
                    "command": {
                        "name": command,
                        "method": spec.name,
                        "data": ctx.data,
                        "epochs": ctx.epochs,
                        "seed": ctx.seed,
                        "device": str(ctx.device),
                        "demo": ctx.demo,
                        "resume": ctx.resume,
                        "threads": ctx.threads,
                        **dataclasses.asdict(ctx.engine),
                    },
                    "options_given": dict(ctx.options),
                    "options_used": dict(ctx.used),
                }
            )
        run_dir.finish(status, error)


_FRAMEWORKS = r"(torch|torchvision|torch_geometric|lightning|monai|ignite|torchgeo|timm)(\.|$)"


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an interrupt so that the run folder records how the run ended."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


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
    """The headline numbers, one per line; nested records (per-split counts, case lists, data
    summaries) stay in ``metrics.json`` and are named once."""
    nested = []
    for k, v in metrics.items():
        if isinstance(v, dict | list | tuple):
            nested.append(k)
        else:
            print(f"  {k}: {v:.4f}" if isinstance(v, float) else f"  {k}: {v}")
    if nested:
        print(f"  (in metrics.json: {', '.join(nested)})")


def cmd_run(args: argparse.Namespace) -> int:
    spec = get_method(args.method)
    ctx = _context(spec, args, demo=args.demo, command="run")
    metrics = _execute(spec, ctx, "run", spec.load_run())
    print(f"{spec.name}: results in {ctx.run_dir.path}")
    _print_metrics(metrics)
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    spec = get_method(args.method)
    reproduce = spec.load_reproduce()
    ctx = _context(spec, args, demo=False, command="reproduce")
    metrics = _execute(spec, ctx, "reproduce", reproduce)
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
            ctx = _context(spec, args, demo=True, command="run")
            metrics = _execute(spec, ctx, "run", spec.load_run())
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
        except KeyboardInterrupt:
            raise
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


def cmd_fit(args: argparse.Namespace) -> int:
    from plugins.engine import lightning_cli

    try:
        return lightning_cli(args.args)
    except SystemExit as e:  # LightningCLI's --help and --print_config end with an exit
        return int(e.code or 0)


def _predict_methods() -> dict[str, MethodSpec]:
    return {n: s for n, s in available_methods().items() if s.extra.get("predict")}


def cmd_predict(args: argparse.Namespace) -> int:
    spec = get_method(args.method)
    target = spec.extra.get("predict")
    if target is None:
        raise UserInputError(
            f"method '{spec.name}' has no predict command; predict takes: "
            f"{', '.join(_predict_methods()) or '(none)'}."
        )
    from plugins.registry import load_dotted

    return int(load_dotted(target)(args.args) or 0)


def _bench_topics() -> list[str]:
    if not BENCH_DIR.is_dir():
        return []
    return sorted(p.stem for p in BENCH_DIR.glob("*.py") if not p.name.startswith("_"))


def cmd_bench(args: argparse.Namespace) -> int:
    if not BENCH_DIR.is_dir():
        raise UserInputError(
            "benchmarks live in the source checkout (benchmarks/); run this from a git clone."
        )
    topics = _bench_topics()
    if args.topic:
        if args.topic not in topics:
            raise UserInputError(
                f"no benchmark named '{args.topic}'; choose from: {', '.join(topics)}."
            )
        topics = [args.topic]
    status = 0
    for topic in topics:
        print(f"== {topic}", flush=True)
        status |= subprocess.call([sys.executable, str(BENCH_DIR / f"{topic}.py"), *args.args])
    return status


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``contrastive-plugins: error: ...`` and exit status 2."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        print(f"{self.prog}: error: {message} (see {self.prog} --help).", file=sys.stderr)
        raise SystemExit(2)


class _MethodHelp(argparse.Action):
    """``run METHOD --help``: the usual help, then the method's ``--set`` keys with defaults."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any):
        super().__init__(
            option_strings,
            dest,
            nargs=0,
            help="show this help (with METHOD: its --set keys) and exit",
        )

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option_string: Any = None) -> None:  # fmt: skip
        parser.print_help()
        command = parser.prog.split()[-1]
        method = getattr(namespace, "method", None)
        specs = available_methods()
        if method in specs:
            spec = specs[method]
            print(f"\n--set options of '{command} {method}' (key=default):")
            print(spec.option_set(command).help_text())
        else:
            print(f"\nmethods: {', '.join(specs)}; '{command} METHOD --help' lists its --set keys.")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="contrastive-plugins", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("list", help="registered methods").set_defaults(func=cmd_list)

    def add_run_flags(
        sp: argparse.ArgumentParser, resumable: bool = True, engine: bool = True
    ) -> None:
        sp.add_argument(
            "--data", help="data path or data-set name (default: the method's embedded real data)"
        )
        sp.add_argument(
            "--epochs",
            type=_int_at_least(1),
            help="training epochs or steps, at least 1 (default: the method's; see config.yaml)",
        )
        sp.add_argument(
            "--device", default="auto", help="cpu, cuda, cuda:N (default: cuda when available)"
        )
        sp.add_argument(
            "--out", default="runs", help="parent folder of run directories (default: runs)"
        )
        sp.add_argument(
            "--seed", type=_int_at_least(0), default=0, help="random seed, 0 or more (default 0)"
        )
        sp.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="method option, repeatable; 'METHOD --help' lists the keys",
        )
        sp.add_argument("--no-progress", action="store_true", help="hide progress bars")
        sp.add_argument(
            "--threads",
            type=_int_at_least(1),
            help="torch CPU threads, at least 1 (default: the method's; 1 is often faster on a busy machine)",
        )
        if engine:
            sp.add_argument(
                "--devices",
                type=_int_at_least(1),
                help="processes (GPUs, or CPU processes with --strategy ddp), at least 1 (default 1)",
            )
            sp.add_argument(
                "--strategy",
                choices=STRATEGIES,
                help="Lightning strategy: auto or ddp (default auto)",
            )
            sp.add_argument(
                "--precision",
                choices=PRECISIONS,
                help="Lightning precision, e.g. bf16-mixed (default 32-true); losses stay float32",
            )
            sp.add_argument(
                "--accumulate",
                type=_int_at_least(1),
                help="batches per optimisation step, at least 1 (default 1)",
            )
        if resumable:
            sp.add_argument(
                "--resume",
                metavar="CKPT",
                help="continue from a run's last.ckpt (same method, data and options)",
            )
            sp.add_argument(
                "--checkpoint-every",
                metavar="N|Ts|Tm",
                help="write last.ckpt every N steps or T seconds/minutes (default 2m; 0: only at the end)",
            )

    for name, func, help_ in (
        ("run", cmd_run, "train one method"),
        ("reproduce", cmd_reproduce, "small-scale reproduction of the paper's claim"),
    ):
        sp = sub.add_parser(name, help=help_, add_help=False)
        sp.add_argument("-h", "--help", action=_MethodHelp)
        sp.add_argument("method", help="a registered method (see 'contrastive-plugins list')")
        add_run_flags(sp, resumable=name == "run")
        if name == "run":
            sp.add_argument("--demo", action="store_true", help="a short run")
        sp.set_defaults(func=func)

    sp = sub.add_parser("demo", help="every method briefly on its embedded data; one table")
    add_run_flags(sp, resumable=False, engine=False)
    sp.add_argument("--methods", help="comma-separated subset")
    sp.set_defaults(func=cmd_demo)

    sp = sub.add_parser(
        "fit",
        help="train a Lightning task from a YAML config (LightningCLI), e.g. fit --config "
        "plugins/methods/simclr/configs/simclr_digits.yaml",
        description="Lightning's CLI over any task and datamodule named by class_path, as "
        "'torchgeo fit'. Shipped configs: plugins/methods/<name>/configs/*.yaml, "
        "agri_ext/configs/*.yaml. Everything after 'fit' goes to LightningCLI "
        "(--config, --trainer.*, --model.*, --data.*, --print_config).",
        add_help=False,
    )
    sp.add_argument("args", nargs=argparse.REMAINDER, help="LightningCLI arguments")
    sp.set_defaults(func=cmd_fit)

    predict = ", ".join(_predict_methods()) or "(none installed)"
    sp = sub.add_parser(
        "predict",
        help=f"method-specific inference (methods: {predict}), e.g. predict glcnet --checkpoint C IN.tif OUT.tif",
        description=f"Method-specific inference. Methods with a predict command: {predict}. "
        "'predict METHOD --help' shows that method's arguments.",
    )
    sp.add_argument("method", help=f"one of: {predict}")
    sp.add_argument("args", nargs=argparse.REMAINDER, help="the method's own arguments")
    sp.set_defaults(func=cmd_predict)

    topics = ", ".join(_bench_topics()) or "(source checkout only)"
    sp = sub.add_parser(
        "bench",
        help=f"run the benchmarks (topics: {topics})",
        description=f"Speed and memory against peer libraries, measured in one run. Topics: {topics}.",
    )
    sp.add_argument("topic", nargs="?", help=f"one of: {topics} (default: all)")
    sp.add_argument("args", nargs=argparse.REMAINDER, help="passed to the benchmark script")
    sp.set_defaults(func=cmd_bench)
    return p


_OUR_PACKAGES = ("plugins", "torchgeo_ext", "monai_ext", "graph_ext", "agri_ext")


def _our_warnings_as_one_line(framework_format: Any) -> Any:
    """``warnings.formatwarning`` for the command: a warning raised by this library's code is one
    line, ``contrastive-plugins: warning: ...``, not Python's ``file:line: UserWarning:`` and
    source line; the frameworks' warnings keep their usual form (their location helps there)."""
    root = Path(__file__).resolve().parents[1]
    ours = tuple(str(root / name) + os.sep for name in _OUR_PACKAGES)

    def format_warning(message: Any, category: Any, filename: str, lineno: int, line: Any = None):
        if os.path.abspath(filename or "").startswith(ours):
            return f"contrastive-plugins: warning: {message}\n"
        return framework_format(message, category, filename, lineno, line)

    return format_warning


def main(argv: list[str] | None = None) -> int:
    import signal

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["fit"]:
        # everything after 'fit' belongs to LightningCLI, options included
        args = argparse.Namespace(func=cmd_fit, args=argv[1:], no_progress=False)
    else:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as e:  # --help, or a bad flag already reported in one line
            return int(e.code or 0)
    from plugins.progress import set_enabled

    set_enabled(not getattr(args, "no_progress", False))
    # the frameworks' own deprecation notices are theirs to fix, not the user's to read
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=_FRAMEWORKS)
    framework_format = warnings.formatwarning
    warnings.formatwarning = _our_warnings_as_one_line(framework_format)
    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread (e.g. called from a test worker thread)
        pass
    try:
        return args.func(args)
    except WorkerFinished:  # a copy launched for ddp: rank 0 reports
        return 0
    except UserInputError as e:
        print(f"contrastive-plugins: error: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"contrastive-plugins: error: file not found: {e.filename or e}.", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f"contrastive-plugins: error: {e}", file=sys.stderr)
        return 1
    except Terminated:
        print("contrastive-plugins: terminated.", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("contrastive-plugins: interrupted.", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = framework_format
        set_enabled(True)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
