"""Lazy package exports, so that importing a method's package (or its registry spec) does not
import its framework (torchgeo, MONAI, PyG) until a name is actually used."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Module-level ``__getattr__`` and ``__dir__`` for ``package``.

    Args:
        package: the package's ``__name__`` (used in the error message).
        exports: public name -> module that defines it.

    Examples:
        >>> __getattr__, __dir__ = lazy_exports(__name__, {"ARIEL": "graph_ext.model"})
    """

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__
