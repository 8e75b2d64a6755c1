"""Typed, ranged ``--set key=value`` options: one declaration per method, checked before any work.

Each method declares what it reads as an :class:`OptionSet` (``MethodSpec.options`` names it, one set
per command). The command checks every ``--set`` key against it: an unknown key is refused with the
list of known ones, a value that does not parse to the option's type or lies outside its range is
refused with one sentence, and ``run METHOD --help`` prints the keys with their defaults. A method
reads a value with ``ctx.option(key)``; reading a key that was never declared is a programming error
(``KeyError``), so the declaration and the code cannot drift apart.

Config dataclasses already hold each hyperparameter default once (with its source);
:func:`options_from_dataclass` turns their fields into options so the defaults stay written once.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from plugins.errors import UserInputError

__all__ = [
    "Option",
    "OptionSet",
    "config_from_options",
    "declared",
    "options_from_dataclass",
    "parse_bool",
    "parse_pairs",
]

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_NULL = {"none", "null", "~", ""}
_KINDS = ("int", "float", "bool", "str", "any")


def parse_bool(value: Any) -> bool:
    """``true/yes/on/1`` or ``false/no/off/0`` (any case), or a real bool."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError("expected true or false")


def _scalar(kind: str, value: Any) -> Any:
    if kind == "any":
        if isinstance(value, str):
            import yaml

            return yaml.safe_load(value)
        return value
    if kind == "bool":
        return parse_bool(value)
    if kind == "int":
        if isinstance(value, bool):
            raise ValueError("expected an integer")
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError("expected an integer")
            return int(value)
        return int(str(value).strip())
    if kind == "float":
        if isinstance(value, bool):
            raise ValueError("expected a number")
        number = float(str(value).strip()) if isinstance(value, str) else float(value)
        if not math.isfinite(number):  # nan/inf parse as floats but no hyperparameter takes them
            raise ValueError("expected a finite number")
        return number
    return str(value).strip() if isinstance(value, str) else str(value)


@dataclass(frozen=True)
class Option:
    """One ``--set`` key.

    Attributes:
        name: the key.
        kind: ``int``, ``float``, ``bool``, ``str`` or ``any`` (YAML-parsed, for mixed values).
        default: used when the key is not given; ``None`` means the method decides (``default_doc``
            says how).
        help: one line for ``--help``.
        demo_default: the default of a ``--demo`` run, when it differs.
        many: a list (``--set key=a,b,c``); each item is checked.
        nullable: ``none``/``null`` is a valid value (stored as ``None``).
        choices: the allowed values (each item, for lists).
        low, high: inclusive range for numbers (each item, for lists).
        default_doc: text shown instead of ``default`` (e.g. "0.1 on graphs of 200+ nodes, else 0.5").
        length: the exact number of items of a list option.
    """

    name: str
    kind: str = "any"
    default: Any = None
    help: str = ""
    demo_default: Any = None
    many: bool = False
    nullable: bool = False
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    default_doc: str | None = None
    length: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"option {self.name}: kind must be one of {_KINDS}, got {self.kind!r}")

    def describe_type(self) -> str:
        one = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "text"}
        many = {"int": "integers", "float": "numbers", "bool": "true/false values", "str": "texts"}
        text = (
            f"a list of {many.get(self.kind, 'values')}"
            if self.many
            else one.get(self.kind, "a value")
        )
        return text + " or none" if self.nullable else text

    def _check_item(self, item: Any) -> Any:
        value = _scalar(self.kind, item)
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"expected one of {', '.join(map(str, self.choices))}")
        if self.kind in ("int", "float"):
            if self.low is not None and value < self.low:
                raise ValueError(f"expected at least {_num(self.low)}")
            if self.high is not None and value > self.high:
                raise ValueError(f"expected at most {_num(self.high)}")
        return value

    def parse(self, raw: Any) -> Any:
        """``raw`` (a command-line string or a Python value) as this option's type, or raise
        :class:`UserInputError` with one sentence naming the key, the value and what was expected."""
        try:
            if raw is None or (isinstance(raw, str) and raw.strip().lower() in _NULL):
                if self.nullable or (self.many and raw is not None):
                    return None if self.nullable else []
                raise ValueError(f"expected {self.describe_type()}")
            if self.many:
                if isinstance(raw, str):
                    items: Iterable[Any] = [v.strip() for v in raw.split(",") if v.strip()]
                elif isinstance(raw, list | tuple):
                    items = raw
                else:
                    items = [raw]
                values = [self._check_item(v) for v in items]
                if self.length is not None and len(values) != self.length:
                    raise ValueError(f"expected {self.length} comma-separated values")
                return values
            return self._check_item(raw)
        except (ValueError, TypeError) as e:
            reason = str(e) if str(e).startswith("expected") else f"expected {self.describe_type()}"
            raise UserInputError(f"--set {self.name}={_show(raw)}: {reason}.") from None

    def default_for(self, demo: bool) -> Any:
        if demo and self.demo_default is not None:
            return self.demo_default
        return self.default

    def help_line(self) -> str:
        if self.default_doc is not None:
            default = self.default_doc
        else:
            default = _show(self.default)
            if self.demo_default is not None:
                default += f" ({_show(self.demo_default)} with --demo)"
        extra = f"; one of {', '.join(map(str, self.choices))}" if self.choices else ""
        if self.low is not None and self.high is not None:
            extra += f"; {_num(self.low)} to {_num(self.high)}"
        elif self.low is not None:
            extra += f"; >= {_num(self.low)}"
        elif self.high is not None:
            extra += f"; <= {_num(self.high)}"
        if self.length is not None:
            extra += f"; {self.length} values"
        text = f"{self.name}={default}  ({self.describe_type()}{extra})"
        return f"{text}  {self.help}" if self.help else text


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return ",".join(_show(v) for v in value)
    return str(value)


class OptionSet(Mapping[str, Option]):
    """The ``--set`` keys one command of one method reads, in declaration order."""

    def __init__(self, *groups: Option | Iterable[Option]):
        self._options: dict[str, Option] = {}
        for group in groups:
            for opt in [group] if isinstance(group, Option) else group:
                self._options[opt.name] = opt

    def __getitem__(self, key: str) -> Option:
        return self._options[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._options)

    def __len__(self) -> int:
        return len(self._options)

    def without(self, *names: str) -> OptionSet:
        return OptionSet(o for n, o in self._options.items() if n not in names)

    def replace(self, name: str, **changes: Any) -> OptionSet:
        """A copy with option ``name`` changed (e.g. another default for ``reproduce``)."""
        return OptionSet(
            dataclasses.replace(o, **changes) if n == name else o for n, o in self._options.items()
        )

    def parse(
        self, raw: Mapping[str, Any], command: str = "run", method: str = ""
    ) -> dict[str, Any]:
        """Check and convert ``raw`` (key -> string or value); unknown keys are refused."""
        out: dict[str, Any] = {}
        for key, value in raw.items():
            if key not in self._options:
                where = f" for {command} {method}".rstrip() if method else ""
                known = ", ".join(sorted(self._options)) or "(none)"
                hint = _closest(key, self._options)
                raise UserInputError(
                    f"unknown option --set {key}{where}{hint}; known keys: {known}."
                )
            out[key] = self._options[key].parse(value)
        return out

    def help_text(self, indent: str = "  ") -> str:
        if not self._options:
            return f"{indent}(this command takes no --set options)"
        return "\n".join(indent + o.help_line() for o in self._options.values())


def _closest(key: str, options: Mapping[str, Any]) -> str:
    import difflib

    match = difflib.get_close_matches(key, list(options), n=1, cutoff=0.6)
    return f" (did you mean {match[0]}?)" if match else ""


def parse_pairs(pairs: Sequence[str]) -> dict[str, str]:
    """``["a=1", "b=x,y"]`` -> ``{"a": "1", "b": "x,y"}``; a pair without ``=`` is refused."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserInputError(f"--set expects key=value, got '{pair}'.")
        out[key.strip()] = value
    return out


def _kind_of(tp: Any) -> tuple[str, bool, bool]:
    """(kind, many, nullable) of a dataclass field's type."""
    nullable = False
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        nullable = len(args) < len(typing.get_args(tp))
        if len(args) != 1:
            return "any", False, nullable
        tp, origin = args[0], typing.get_origin(args[0])
    if origin in (tuple, list, Sequence):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        inner = {int: "int", float: "float", bool: "bool", str: "str"}.get(
            args[0] if args else None
        )
        return inner or "any", True, nullable
    if origin is typing.Literal:
        return "str", False, nullable
    kind = {bool: "bool", int: "int", float: "float", str: "str"}.get(tp, "any")
    return kind, False, nullable


def options_from_dataclass(
    cls: type,
    help: Mapping[str, str] | None = None,
    exclude: Iterable[str] = (),
    ranges: Mapping[str, tuple[float | None, float | None]] | None = None,
    choices: Mapping[str, tuple[Any, ...]] | None = None,
    defaults: Mapping[str, Any] | None = None,
    demo_defaults: Mapping[str, Any] | None = None,
    default_docs: Mapping[str, str] | None = None,
) -> list[Option]:
    """One :class:`Option` per field of config dataclass ``cls``: its type, its default (the one
    place each default is written) and optional help, range and choices."""
    hints = typing.get_type_hints(cls)
    help, ranges, choices = dict(help or {}), dict(ranges or {}), dict(choices or {})
    defaults, demo_defaults = dict(defaults or {}), dict(demo_defaults or {})
    default_docs = dict(default_docs or {})
    skip = set(exclude)
    out = []
    for f in dataclasses.fields(cls):
        if f.name in skip or f.name.startswith("_") or not f.init:
            continue
        kind, many, nullable = _kind_of(hints.get(f.name, Any))
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = None
        default = defaults.get(f.name, default)
        if isinstance(default, tuple):
            default = list(default)
        lo, hi = ranges.get(f.name, (None, None))
        literal = _literal_choices(hints.get(f.name))
        out.append(
            Option(
                f.name,
                kind,
                default,
                help.get(f.name, ""),
                demo_default=demo_defaults.get(f.name),
                many=many,
                nullable=nullable or default is None,
                choices=choices.get(f.name, literal),
                low=lo,
                high=hi,
                default_doc=default_docs.get(f.name),
                length=len(default)
                if many and isinstance(default, list) and _fixed(hints.get(f.name))
                else None,
            )
        )
    return out


def _fixed(tp: Any) -> bool:
    """A ``tuple[float, float]`` (fixed length), not a ``tuple[float, ...]``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        tp = next((a for a in typing.get_args(tp) if a is not type(None)), tp)
    return typing.get_origin(tp) is tuple and Ellipsis not in typing.get_args(tp)


def _literal_choices(tp: Any) -> tuple[Any, ...] | None:
    if tp is None:
        return None
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        for a in typing.get_args(tp):
            if typing.get_origin(a) is typing.Literal:
                return typing.get_args(a)
    if typing.get_origin(tp) is typing.Literal:
        return typing.get_args(tp)
    return None


OptionSource = Callable[[], Mapping[str, OptionSet]]


def config_from_options(ctx: Any, cls: type, exclude: Iterable[str] = (), **base: Any) -> Any:
    """An instance of config dataclass ``cls``: ``base`` values, then every field that ``ctx``
    has an option for (the user's ``--set`` value or its declared default); lists become tuples
    where the field's default is a tuple."""
    skip = set(exclude)
    values = dict(base)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        if ctx.option_set is not None and f.name not in ctx.option_set:
            continue
        if ctx.option_set is None and f.name not in ctx.options:
            continue
        if f.name in base and f.name not in ctx.options:
            ctx.used[f.name] = base[f.name]
            continue
        value = ctx.option(f.name)
        if value is None and f.default is not None and f.name not in ctx.options:
            continue
        if isinstance(value, list) and isinstance(f.default, tuple):
            value = tuple(value)
        values[f.name] = value
    return cls(**values)


def declared(ctx: Any, options: OptionSet, command: str | None = None) -> Any:
    """Give ``ctx`` the ``options`` of ``command`` when it came without an option set (a direct
    Python call of a method's ``run``/``reproduce``): its options are checked and typed, and every
    ``ctx.option`` read finds its declared default, as through the command. Returns ``ctx``."""
    if ctx.option_set is None:
        if command is not None:
            ctx.command = command
        ctx.option_set = options
        ctx.options = options.parse(ctx.options, ctx.command, ctx.method)
    return ctx
