"""The one way a setting is checked: a value against a type hint (and a range), a table against a dataclass.

Run configs (``minisd.train.config``), model constructors' settings (``minisd.models.registry``) and every other
table a user writes are checked here before any work, so ``train.steps=1.5`` or ``model.hidden=[-1]`` stop with
one line that names the setting and says what it must be.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Callable

from minisd.errors import ConfigError

# A range a setting must lie in: a test and the words that state it.
Range = tuple[Callable[[Any], bool], str]
AT_LEAST_ONE: Range = (lambda v: v >= 1, "at least 1")
NON_NEGATIVE: Range = (lambda v: v >= 0, "0 or more")
POSITIVE: Range = (lambda v: v > 0, "greater than 0")
UNIT_INTERVAL: Range = (lambda v: 0 <= v <= 1, "between 0 and 1")
DECAY: Range = (lambda v: 0 <= v < 1, "at least 0 and below 1")



def _describe(annotation: Any) -> str:
    """A type hint in words: ``list[int]`` -> "a list of integers"."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("none" if a is type(None) else _describe(a) for a in args)
    if origin in (list, tuple):
        return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s" if args else "a list"
    if origin is dict:
        return f"a table of {_describe(args[1]).removeprefix('a ').removeprefix('an ')}s" if args else "a table"
    return {int: "an integer", float: "a finite number", bool: "true or false", str: "a string"}.get(
        annotation, str(annotation))


def _matches(value: Any, annotation: Any) -> bool:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if annotation is type(None):
        return value is None
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis and len(value) != len(args):
            return False
        return all(_matches(v, args[0]) for v in value) if args else True
    if origin is dict:
        return isinstance(value, dict) and (not args or all(
            _matches(k, args[0]) and _matches(v, args[1]) for k, v in value.items()))
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if annotation is str:
        return isinstance(value, str)
    return isinstance(value, annotation) if isinstance(annotation, type) else True


def check_value(name: str, value: Any, annotation: Any, must_be: Range | None = None) -> None:
    """Raise :class:`ConfigError` unless ``value`` has the type of ``annotation`` (and lies in ``must_be``)."""
    if not _matches(value, annotation):
        raise ConfigError(f"{name} must be {_describe(annotation)}, got {value!r}")
    if must_be is not None and value is not None and not must_be[0](value):
        raise ConfigError(f"{name} must be {must_be[1]}, got {value!r}")


def check_section(section: str, values: dict[str, Any], schema: type) -> None:
    """Check a config section against a dataclass: no unknown keys, every value of its field's type and range."""
    fields = {f.name: f for f in dataclasses.fields(schema)}
    unknown = set(values) - set(fields)
    if unknown:
        raise ConfigError(f"unknown {section} settings {sorted(unknown)}; valid ones are {sorted(fields)}")
    hints = typing.get_type_hints(schema)
    for key, value in values.items():
        check_value(f"{section}.{key}", value, hints[key], fields[key].metadata.get("must_be"))
