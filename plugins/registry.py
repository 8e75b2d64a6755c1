"""Method registry: every method publishes a :class:`MethodSpec` through the entry-point group
``contrastive_plugins.methods`` (see ``pyproject.toml``).

A spec module must stay import-light (no torchgeo / MONAI / PyG import at load time) so that
``contrastive-plugins list`` is instant; the heavy code is named by dotted strings and imported only
when a method runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from plugins.errors import UserInputError

ENTRY_POINT_GROUP = "contrastive_plugins.methods"


@dataclass(frozen=True)
class MethodSpec:
    """What the command needs to know about a method.

    Attributes:
        name: registry name (``contrastive-plugins run NAME``).
        paper: short citation.
        domain: who it is for.
        framework: what it plugs into.
        default_data: the embedded real data a bare run uses.
        run: ``"module:function"``; ``function(ctx: RunContext) -> dict[str, float]`` trains on
            ``ctx.data`` (or the embedded default), writes into ``ctx.run_dir`` and returns headline
            metrics. ``ctx.demo`` asks for a short run (seconds to a minute on a CPU).
        reproduce: ``"module:function"`` with the same signature for the paper-claim reproduction.
        demo_metric: the metric key the demo table shows for this method.
        options: ``"module:NAME"`` of a mapping ``{"run": OptionSet, "reproduce": OptionSet}``:
            the ``--set`` keys each command reads (imported only when a method runs or its help
            is shown). ``None``: the method takes no ``--set`` options.
        engine: the engine flags (``devices``, ``strategy``, ``precision``, ``accumulate``) the
            method honours; the command refuses the others with one sentence.
    """

    name: str
    paper: str
    domain: str
    framework: str
    default_data: str
    run: str
    reproduce: str | None = None
    demo_metric: str | None = None
    options: str | None = None
    engine: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def option_set(self, command: str = "run") -> Any:
        """The :class:`plugins.options.OptionSet` of ``command`` (``run`` or ``reproduce``)."""
        from plugins.options import OptionSet

        if self.options is None:
            return OptionSet()
        module, _, attr = self.options.partition(":")
        sets = getattr(importlib.import_module(module), attr)
        return sets.get(command, OptionSet())

    def load_run(self) -> Callable[..., dict]:
        return load_dotted(self.run)

    def load_reproduce(self) -> Callable[..., dict]:
        if self.reproduce is None:
            raise UserInputError(f"method '{self.name}' has no reproduction yet.")
        return load_dotted(self.reproduce)


def load_dotted(dotted: str) -> Callable[..., Any]:
    module, _, attr = dotted.partition(":")
    return getattr(importlib.import_module(module), attr)


def available_methods() -> dict[str, MethodSpec]:
    """All registered methods, by name, sorted. Entry points that fail to load are skipped."""
    specs: dict[str, MethodSpec] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            spec = ep.load()
        except (ImportError, AttributeError):
            continue  # a method whose package is not built yet; `list` shows the rest
        specs[spec.name] = spec
    return dict(sorted(specs.items()))


def get_method(name: str) -> MethodSpec:
    specs = available_methods()
    if name not in specs:
        raise UserInputError(
            f"unknown method '{name}'; choose one of: {', '.join(specs) or '(none installed)'}."
        )
    return specs[name]
