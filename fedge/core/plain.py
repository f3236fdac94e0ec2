"""Dataclasses to plain JSON values and back, checked field by field (no pickle, no eval)."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar, Union

T = TypeVar("T")


def to_plain(value: Any) -> Any:
    """A dataclass (nested ones, lists, tuples and dicts of them too) as JSON-ready values.

    Tuples become lists, as JSON has them; `None` stays `None`.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    return value


def from_plain(cls: type[T], data: Any, where: str = "") -> T:
    """Build dataclass `cls` from what to_plain made, checking every field's type.

    ValueError naming the field (`where` prefixes it) for a missing or unknown key or a value
    of the wrong type. Fields with defaults may be missing.
    """
    name = where or cls.__name__
    if not isinstance(data, dict):
        raise ValueError(f"{name} is not an object")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{name} has unknown keys {unknown}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, field in fields.items():
        if key not in data:
            no_default = field.default is dataclasses.MISSING
            if no_default and field.default_factory is dataclasses.MISSING:
                raise ValueError(f"{name} lacks {key!r}")
            continue
        kwargs[key] = _value(hints[key], data[key], f"{name}.{key}")
    return cls(**kwargs)


def _value(kind: Any, value: Any, where: str) -> Any:
    """`value` checked (and converted: lists to tuples, nested dataclasses) against `kind`."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is Any:
        return value
    if origin in (Union, types.UnionType):
        for option in args:
            try:
                return _value(option, value, where)
            except ValueError:
                continue
        raise ValueError(f"{where} is {value!r}, not {kind}")
    if kind is type(None):
        if value is not None:
            raise ValueError(f"{where} is {value!r}, not null")
        return None
    if dataclasses.is_dataclass(kind):
        return from_plain(kind, value, where)  # type: ignore[arg-type]
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise ValueError(f"{where} is {value!r}, not a list")
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(args) != len(value):
                raise ValueError(f"{where} has {len(value)} items, not {len(args)}")
            return tuple(
                _value(a, v, f"{where}[{i}]")
                for i, (a, v) in enumerate(zip(args, value, strict=True))
            )
        item = args[0] if args else Any
        items = [_value(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ValueError(f"{where} is {value!r}, not an object")
        item = args[1] if args else Any
        return {k: _value(item, v, f"{where}.{k}") for k, v in value.items()}
    return _scalar(kind, value, where)


def _scalar(kind: Any, value: Any, where: str) -> Any:
    """A bool, int, float or str as JSON has it (an int where a float is due is a float)."""
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif kind is str:
        ok = isinstance(value, str)
    else:
        raise TypeError(f"{where}: no JSON form for {kind}")
    if not ok:
        raise ValueError(f"{where} is {value!r}, not {kind.__name__}")
    return value
