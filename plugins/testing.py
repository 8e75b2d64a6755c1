"""Test helpers: a real gloo group of CPU processes, and a command interrupted mid-training.

:func:`run_gloo` tests distributed code on one machine. Our DDP tests use it (a gathered loss must
give the single-process loss and gradient); users can check their own losses the same way::

    def worker(rank):                   # module-level, so that it pickles by reference
        ...                             # the gloo group is initialised here
        return {"loss": loss.detach(), "grad": x.grad}

    per_rank = run_gloo(worker, 2)      # [rank 0's result, rank 1's result]

:func:`interrupt_cli_run` is the kill test's harness: it sends Ctrl-C (SIGINT) to a real
``python -m plugins run ...`` process once its periodic ``last.ckpt`` exists.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from plugins.checkpoint import load_checkpoint


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(
    rank: int, worker: Callable[..., Any], world_size: int, port: int, out: str, args: tuple
) -> None:
    # A forked child inherits the parent's OpenMP thread pool in a state it cannot use: after a
    # test session had run parallel matrix products, both ranks hung in their first matmul. One
    # intra-op thread never enters the pool (and the ranks of a test share two cores anyway).
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    try:
        result = worker(rank, *args)
    finally:
        dist.destroy_process_group()
    torch.save({"result": result}, Path(out) / f"rank{rank}.pt")


def run_gloo(worker: Callable[..., Any], world_size: int, *args: Any) -> list[Any]:
    """Run ``worker(rank, *args)`` in ``world_size`` processes joined in a gloo process group.

    Returns the workers' return values in rank order (they travel through ``torch.save``).
    Raises when any process fails (``torch.multiprocessing`` re-raises its error).

    The processes are forked where the platform allows (Linux): a spawned process imports torch
    and Lightning again, which took over a minute per test on a loaded 2-core machine, a forked
    one starts in about a second (as DataLoader workers do).
    """
    method = "fork" if "fork" in mp.get_all_start_methods() and sys.platform == "linux" else "spawn"
    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(
            _entry,
            args=(worker, world_size, free_port(), out, args),
            nprocs=world_size,
            join=True,
            start_method=method,
        )
        return [
            load_checkpoint(Path(out) / f"rank{r}.pt", what="rank result")["result"]
            for r in range(world_size)
        ]


@dataclass
class Interrupted:
    """What :func:`interrupt_cli_run` saw of a command that it interrupted."""

    returncode: int
    stdout: str
    stderr: str
    last_ckpt: Path  # the checkpoint that existed when the signal was sent


def _text(file: IO[bytes]) -> str:
    file.seek(0)
    return file.read().decode(errors="replace")


def _tail(file: IO[bytes]) -> str:
    return _text(file)[-3000:]


def _saved_step(path: Path) -> int:
    """The step a checkpoint holds: ``step`` (:class:`plugins.checkpoint.Checkpointer`) or
    ``global_step`` (a Lightning checkpoint)."""
    state = load_checkpoint(path)
    return int(state["step"] if "step" in state else state["global_step"])


def interrupt_cli_run(
    argv: list[str],
    out: Path,
    pattern: str = "*/last.ckpt",
    *,
    min_step: int | None = None,
    delay: float = 0.0,
    signum: int = signal.SIGINT,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 240,
) -> Interrupted:
    """Run ``python -m plugins *argv``, send it ``signum`` once a checkpoint exists, await the exit.

    The kill test of a training command::

        argv = ["run", "simclr", ..., "--checkpoint-every", "1", "--out", str(out)]
        cut = interrupt_cli_run(argv, out, cwd=tmp_path)
        assert cut.returncode == 130 and load_checkpoint(cut.last_ckpt)["step"] >= 1

    Args:
        argv: the command line after ``python -m plugins``; it writes checkpoints below ``out``.
        out: the folder that ``pattern`` is matched in.
        pattern: a glob, relative to ``out``, for the checkpoint to wait for.
        min_step: when given, also wait until that checkpoint's step (``step``, or ``global_step``
            in a Lightning checkpoint, read with :func:`plugins.checkpoint.load_checkpoint`) is at
            least this: an interruption later in training.
        delay: sleep a random 0 to ``delay`` seconds before the signal (so that it lands at a
            random step).
        signum: the signal to send.
        cwd: the process's working directory (default: this one's).
        env: variables added to this process's environment, after ``OMP_NUM_THREADS=1`` and
            ``MPLBACKEND=Agg`` (which they may override).
        timeout: seconds to wait for the checkpoint, and again for the exit after the signal.

    Raises:
        AssertionError: naming ``pattern`` and the tail of the process's stderr, when the run ends
            before the checkpoint appears (or before the signal is sent), or a wait times out. The
            process is killed whenever it is still running then.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", **(env or {})}
    want = f"{Path(out) / pattern}" + (f" at step >= {min_step}" if min_step is not None else "")
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "plugins", *argv], cwd=cwd, env=env, stdout=stdout, stderr=stderr
        )
        try:
            deadline = time.monotonic() + timeout
            while True:
                found = sorted(Path(out).glob(pattern))
                if found and (min_step is None or _saved_step(found[0]) >= min_step):
                    break
                if proc.poll() is not None:
                    raise AssertionError(
                        f"the run ended (exit {proc.returncode}) before {want} appeared; "
                        f"its stderr ends:\n{_tail(stderr)}"
                    )
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"no {want} within {timeout:g} s; the run's stderr ends:\n{_tail(stderr)}"
                    )
                time.sleep(0.01)
            if delay:
                time.sleep(random.uniform(0.0, delay))
            if proc.poll() is not None:
                raise AssertionError(
                    f"the run ended (exit {proc.returncode}) after {want} appeared but before the "
                    f"signal was sent; its stderr ends:\n{_tail(stderr)}"
                )
            proc.send_signal(signum)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                raise AssertionError(
                    f"the run did not exit within {timeout:g} s of signal {signum} (sent when "
                    f"{want} existed); its stderr ends:\n{_tail(stderr)}"
                ) from None
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        return Interrupted(proc.returncode, _text(stdout), _text(stderr), found[0])


def lightning_ddp_trainer(rank: int, world_size: int, **kwargs: Any) -> Any:
    """A CPU ``Trainer(strategy="ddp", devices=world_size)`` for a :func:`run_gloo` worker: it
    joins the process group that already exists as an externally launched job (``LOCAL_RANK`` and
    ``WORLD_SIZE`` set, so it starts no processes), with the engine's ``GlobalBatchNormSync`` and
    the worker's own data (no ``DistributedSampler``), for ``max_steps=1`` unless ``kwargs`` say
    otherwise."""
    from lightning.pytorch.strategies import DDPStrategy

    from plugins.engine import GlobalBatchNormSync

    os.environ.update(
        LOCAL_RANK=str(rank), NODE_RANK="0", WORLD_SIZE=str(world_size), RANK=str(rank)
    )
    settings: dict[str, Any] = dict(
        devices=world_size,
        strategy=DDPStrategy(process_group_backend="gloo"),
        plugins=[GlobalBatchNormSync()],
        max_steps=1,
        use_distributed_sampler=False,
    )
    return cpu_trainer(**{**settings, **kwargs})


def cpu_trainer(root: Any = None, **kwargs: Any) -> Any:
    """A quiet one-process CPU ``Trainer`` for tests (no logger, checkpoints, progress bar or
    model summary; ``root`` is its ``default_root_dir``); ``kwargs`` override any setting."""
    from lightning.pytorch import Trainer

    settings: dict[str, Any] = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    if root is not None:
        settings["default_root_dir"] = root
    return Trainer(**{**settings, **kwargs})


def max_state_diff(
    a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], keys: Any = None
) -> float:
    """Largest absolute difference between two state dicts with the same keys (over ``keys``, by
    default all), compared in float64."""
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in keys or a)
