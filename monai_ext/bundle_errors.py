"""One-line errors for the bundles under ``python -m monai.bundle``.

MONAI wraps an exception raised inside a config expression or a transform in ``RuntimeError``s, so
a :class:`plugins.errors.UserInputError` (a missing datalist, a NaN voxel, a truncated image) would
reach the user as a chained traceback. :func:`install_one_line_errors` prints its one sentence and
exits with status 2 instead, as ``contrastive-plugins`` does; every other error keeps its
traceback. Python callers of ``monai.bundle.run`` get the exception; :func:`user_error` finds the
sentence inside it.
"""

from __future__ import annotations

import difflib
import os
import sys
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from plugins.errors import UserInputError

__all__ = [
    "user_error",
    "install_one_line_errors",
    "under_bundle_command",
    "check_overrides",
    "did_you_mean",
]


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


_RUN_FILE = os.path.join("monai", "bundle", "scripts.py")
_TRACKING_KEYS = ("tracking_uri", "experiment_name", "run_name", "save_execute_config")


def _bundle_call() -> tuple[list[str], dict[str, Any], bool] | None:
    """(config files, overrides, tracking?) of the ``monai.bundle`` ``run`` call on the stack."""
    frame: types.FrameType | None = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "run" and code.co_filename.endswith(_RUN_FILE):
            files = frame.f_locals.get("config_file")
            if files is None:
                return None
            files = [files] if isinstance(files, str | os.PathLike) else list(files)
            override = dict(frame.f_locals.get("override") or {})
            return [str(f) for f in files], override, frame.f_locals.get("tracking") is not None
        frame = frame.f_back
    return None


def did_you_mean(key: str, known: Sequence[str]) -> str:
    match = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _parameters(component: Mapping[str, Any]) -> list[str] | None:
    """Keyword arguments the ``_target_`` of a config component takes (``None``: any, or unknown)."""
    import inspect
    import pydoc

    from monai.bundle.config_item import ConfigComponent

    try:
        target = pydoc.locate(ConfigComponent(config=dict(component)).resolve_module_name())
        sig = inspect.signature(target)  # type: ignore[arg-type]
    except (TypeError, ValueError, pydoc.ErrorDuringImport):
        return None
    if target is None or any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return None
    return [n for n in sig.parameters if n != "self"]


def check_overrides() -> tuple[list[str], dict[str, Any]] | None:
    """The config files and overrides of the ``monai.bundle`` ``run`` call on the stack, once
    every override (``--key value``) is known to name a key of those configs: a typo such as
    ``--max_epoch`` would otherwise add a new key that nothing reads, and the run would train
    with the file's value without a word. One sentence naming the files, the key and the closest
    known one. ``None`` outside a ``monai.bundle`` ``run`` call (nothing to check)."""
    from monai.bundle import ConfigParser
    from monai.bundle.reference_resolver import ReferenceResolver

    call = _bundle_call()
    if call is None:
        return None
    files, override, tracking = call
    names = ", ".join(Path(f).name for f in files)
    content = ConfigParser.load_config_files(files)
    for key in override:
        parts = ReferenceResolver.split_id(key)
        node: Any = content
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            if isinstance(node, dict) and part in node:
                node = node[part]
                continue
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
                continue
            if depth == 0 and tracking and part in _TRACKING_KEYS:
                break
            where = "::".join(parts[:depth]) or "the top level"
            known = list(node) if isinstance(node, dict) else []
            if last and depth > 0 and isinstance(node, dict) and "_target_" in node:
                params = _parameters(node)
                if params is None or part in params:
                    break  # a new keyword argument of the component
                raise UserInputError(
                    f"{names}: override --{key}: {node['_target_']} at {where} takes no argument "
                    f"'{part}'{did_you_mean(part, params)}."
                )
            raise UserInputError(
                f"{names}: override --{key} names no key '{part}' at {where}"
                f"{did_you_mean(part, [str(k) for k in known])}."
            )
    return files, override
