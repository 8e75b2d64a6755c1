"""One-line errors for the bundles under ``python -m monai.bundle``.

MONAI wraps an exception raised inside a config expression or a transform in ``RuntimeError``s, so
a :class:`plugins.errors.UserInputError` (a missing datalist, a NaN voxel, a truncated image) would
reach the user as a chained traceback. :func:`install_one_line_errors` prints its one sentence and
exits with status 2 instead, as ``contrastive-plugins`` does; every other error keeps its
traceback. Python callers of ``monai.bundle.run`` get the exception; :func:`user_error` finds the
sentence inside it.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from plugins.errors import UserInputError

__all__ = ["user_error", "install_one_line_errors", "under_bundle_command"]


def user_error(exc: BaseException | None) -> UserInputError | None:
    """The :class:`UserInputError` behind ``exc`` (through ``__cause__``/``__context__``), or ``None``."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, UserInputError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def under_bundle_command() -> bool:
    """Whether this process is ``python -m monai.bundle ...``."""
    main = sys.modules.get("__main__")
    if getattr(getattr(main, "__spec__", None), "name", None) == "monai.bundle.__main__":
        return True
    return bool(sys.argv) and sys.argv[0].endswith(os.path.join("monai", "bundle", "__main__.py"))


def install_one_line_errors(prog: str) -> None:
    """Under ``python -m monai.bundle``: an uncaught error caused by a :class:`UserInputError`
    prints ``<prog>: error: <sentence>`` and exits 2. Installed once per process."""
    if not under_bundle_command() or getattr(sys.excepthook, "_one_line", False):
        return
    previous = sys.excepthook

    def hook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        err = user_error(value)
        if err is None:
            previous(kind, value, tb)
            return
        sys.stdout.flush()
        # under torchrun, torch.distributed's hook captures sys.stderr to prefix it with the rank
        # and would lose the line at os._exit: there the process's own stderr takes it
        torchrun = "TORCHELASTIC_RUN_ID" in os.environ and sys.__stderr__ is not None
        print(f"{prog}: error: {err}", file=sys.__stderr__ if torchrun else sys.stderr, flush=True)
        os._exit(2)  # an excepthook cannot set the status otherwise; the run has failed anyway

    hook._one_line = True  # type: ignore[attr-defined]
    sys.excepthook = hook
