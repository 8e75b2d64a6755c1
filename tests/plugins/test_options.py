"""The option layer: every --set key typed, ranged and known; defaults declared once."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from plugins.errors import UserInputError
from plugins.options import (
    Option,
    OptionSet,
    config_from_options,
    options_from_dataclass,
    parse_bool,
    parse_pairs,
)
from plugins.reporting import RunContext, RunDir


@dataclass
class _Config:
    lr: float = 0.1
    steps: int = 10
    name: str = "a"
    flag: bool = False
    crop: tuple[float, float] = (0.2, 1.0)
    widths: tuple[int, ...] = (8, 16)
    limit: int | None = None


def _set() -> OptionSet:
    return OptionSet(
        options_from_dataclass(
            _Config,
            ranges={"lr": (0, None), "steps": (1, 1000), "crop": (0, 1)},
            choices={"name": ("a", "b")},
            demo_defaults={"steps": 2},
        ),
        Option("seeds", "int", 3, "repeats", low=1),
    )


@pytest.mark.parametrize(
    "key,text,expected",
    [
        ("lr", "0.5", 0.5),
        ("lr", "1e-3", 1e-3),
        ("steps", "7", 7),
        ("name", "b", "b"),
        ("flag", "yes", True),
        ("flag", "False", False),
        ("crop", "0.1, 0.9", [0.1, 0.9]),
        ("widths", "4,8,16", [4, 8, 16]),
        ("limit", "none", None),
        ("limit", "12", 12),
    ],
)
def test_values_parse_to_the_declared_type(key, text, expected):
    assert _set().parse({key: text}) == {key: expected}


@pytest.mark.parametrize(
    "key,text,message",
    [
        ("lr", "abc", "--set lr=abc: expected a number."),
        ("lr", "inf", "--set lr=inf: expected a finite number."),
        ("lr", "nan", "--set lr=nan: expected a finite number."),
        ("steps", "1.5", "--set steps=1.5: expected an integer."),
        ("steps", "0", "--set steps=0: expected at least 1."),
        ("steps", "5000", "--set steps=5000: expected at most 1000."),
        ("name", "c", "--set name=c: expected one of a, b."),
        ("flag", "maybe", "--set flag=maybe: expected true or false."),
        ("crop", "0.5", "--set crop=0.5: expected 2 comma-separated values."),
        ("crop", "0.5,2", "--set crop=0.5,2: expected at most 1."),
        ("widths", "4,x", "--set widths=4,x: expected a list of integers."),
        ("steps", "none", "--set steps=none: expected an integer."),
    ],
)
def test_bad_values_are_one_sentence(key, text, message):
    with pytest.raises(UserInputError) as e:
        _set().parse({key: text})
    assert str(e.value) == message


def test_unknown_key_lists_the_known_ones_and_suggests_the_closest():
    with pytest.raises(UserInputError) as e:
        _set().parse({"step": "3"}, method="toy")
    msg = str(e.value)
    assert "unknown option --set step for run toy (did you mean steps?)" in msg
    for key in ("crop", "flag", "limit", "lr", "name", "seeds", "steps", "widths"):
        assert key in msg


def test_dataclass_defaults_are_the_declared_defaults():
    opts = _set()
    assert opts["lr"].default == 0.1 and opts["steps"].default == 10
    assert opts["crop"].default == [0.2, 1.0] and opts["crop"].length == 2
    assert opts["widths"].length is None and opts["widths"].many
    assert opts["limit"].nullable and opts["steps"].default_for(demo=True) == 2


def test_help_lists_every_key_with_its_default():
    text = _set().help_text()
    assert "steps=10 (2 with --demo)" in text
    assert "crop=0.2,1.0" in text and "limit=none" in text and "seeds=3" in text
    assert len(text.splitlines()) == len(_set())


def test_context_reads_declared_defaults_records_use_and_refuses_undeclared(tmp_path):
    ctx = RunContext(
        "toy", RunDir(path=tmp_path / "r"), options={"lr": "0.5"}, option_set=_set(), demo=True
    )
    assert ctx.option("lr") == 0.5  # the user's value, typed
    assert ctx.option("steps") == 2  # the declared demo default
    assert ctx.option("limit", 99) == 99  # declared None: the code's fallback
    assert ctx.used == {"lr": 0.5, "steps": 2, "limit": 99}
    with pytest.raises(KeyError, match="does not declare"):
        ctx.option("undeclared")


def test_config_from_options_builds_the_dataclass(tmp_path):
    ctx = RunContext(
        "toy",
        RunDir(path=tmp_path / "r"),
        options={"crop": "0.3,0.8", "flag": "true"},
        option_set=_set(),
    )
    cfg = config_from_options(ctx, _Config, steps=4)
    assert cfg == _Config(lr=0.1, steps=4, flag=True, crop=(0.3, 0.8))
    assert isinstance(cfg.crop, tuple)


def test_pairs_and_bools():
    assert parse_pairs(["a=1", "b = x,y", "c="]) == {"a": "1", "b": " x,y", "c": ""}
    with pytest.raises(UserInputError, match="--set expects key=value, got 'novalue'"):
        parse_pairs(["novalue"])
    assert parse_bool("ON") is True and parse_bool(0) is False
