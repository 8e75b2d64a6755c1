"""Progress for long loops and phases, quiet under ``--no-progress``.

:func:`progress_bar` is the one tqdm every training, evaluation, condensation and clustering loop
uses: it moves per step (not per epoch), tells the active run folder that work has started (see
:meth:`plugins.reporting.RunDir.mark_started`), and is silenced by :func:`set_enabled`.
:func:`phase` covers work with no natural steps (t-SNE, a GMM fit, a probe): a line that shows the
elapsed time, refreshed every second, so that 40 s of evaluation never look frozen.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm.auto import tqdm

__all__ = ["progress_bar", "phase", "set_enabled", "enabled"]

_ENABLED = True


def set_enabled(value: bool) -> None:
    """Turn every progress bar of this process on or off (``--no-progress``)."""
    global _ENABLED
    _ENABLED = bool(value)


def enabled() -> bool:
    return _ENABLED


def _mark_started() -> None:
    from plugins.reporting import active_run_dir

    run_dir = active_run_dir()
    if run_dir is not None:
        run_dir.mark_started()


class _Bar(tqdm):
    """tqdm that marks the active run as started at its first step (unless told otherwise)."""

    marks_start = True

    def __iter__(self) -> Iterator[Any]:
        for i, item in enumerate(super().__iter__()):
            if i == 0 and self.marks_start:
                _mark_started()
            yield item

    def update(self, n: float | None = 1) -> bool | None:
        if self.marks_start:
            _mark_started()
        return super().update(n)


def progress_bar(
    iterable: Iterable[Any] | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    show: bool = True,
    unit: str = "step",
    leave: bool = False,
    marks_start: bool = True,
    **kwargs: Any,
) -> tqdm:
    """A tqdm over steps; ``show=False`` (a caller's ``progress`` flag) or ``--no-progress`` hides it.

    ``marks_start=False`` for loops that only prepare (reading and checking files): a failure
    there still removes the run folder, as for any failure before the first training step.

    ``mininterval=1`` keeps redraws cheap on a busy CPU while still moving every second.
    """
    kwargs.setdefault("mininterval", 1.0)
    kwargs.setdefault("dynamic_ncols", True)
    bar = _Bar(
        iterable,
        total=total,
        desc=desc,
        disable=not (show and _ENABLED),
        unit=unit,
        leave=leave,
        **kwargs,
    )
    bar.marks_start = marks_start
    return bar


@contextlib.contextmanager
def phase(desc: str, show: bool = True) -> Iterator[None]:
    """Show ``desc: 12s`` while the block runs, refreshed every second."""
    if not (show and _ENABLED):
        yield
        return
    if not sys.stderr.isatty():  # a log file: one line at the end instead of a ticking clock
        start = time.perf_counter()
        yield
        print(f"{desc}: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
        return
    bar = tqdm(total=None, desc=desc, bar_format="{desc}: {elapsed}", leave=False)
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(1.0):
            bar.refresh()

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        bar.close()
