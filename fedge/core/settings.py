"""Declaring a run setting once: default, help, allowed values, and who may change it.

Each RunConfig field is `name: type = setting(default, help, ...)`. Validation of single
values, the `fedge compress` allow-list, what a resumed run may change, what stays on the
server, the generic CLI flags and `--run-config` parsing are all derived from these
declarations; tests check pyproject.toml's defaults against them.
"""

from __future__ import annotations

import dataclasses
import math
import re
import shlex
import tomllib
from dataclasses import dataclass
from typing import Any


class ConfigError(ValueError):
    """A run setting has a bad value; the message names it and what is allowed."""


_INTERVAL = re.compile(r"^([\[(])\s*(\S+)\s*,\s*(\S+)\s*([\])])$")
_BOUND = re.compile(r"^(>=|>|<=|<)\s*(\S+)$")


@dataclass(frozen=True)
class Setting:
    """What the declaration of one setting says."""

    name: str  # snake_case field name
    kind: type  # bool | int | float | str
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    prefix: str = ""  # besides the choices, values starting with it (checked by a rule)
    interval: str = ""  # "(0, 1)", "[0, 1)", ">= 1", "> 0"; empty: any value of the type
    compress: bool = False  # `fedge compress` may change it (it does not touch the teacher)
    resume: bool = False  # a resumed run may change it
    server_only: bool = False  # never sent to clients

    @property
    def key(self) -> str:
        """The kebab-case key (pyproject, scenario files, --run-config, flags)."""
        return kebab(self.name)

    def allowed(self) -> str:
        """What values are allowed, in words."""
        if self.choices:
            return ", ".join(self.choices) + (f", {self.prefix}SPEC" if self.prefix else "")
        if self.interval:
            return self.interval
        return {bool: "true, false", int: "an integer", float: "a number"}.get(
            self.kind, "a string"
        )

    def check(self, value: Any) -> None:
        """ConfigError naming the setting and what is allowed, if `value` is not allowed."""
        free = self.prefix and isinstance(value, str) and value.startswith(self.prefix)
        if self.choices and value not in self.choices and not free:
            raise ConfigError(f"unknown {self.key} {value!r}; allowed: {self.allowed()}")
        finite = not isinstance(value, float) or math.isfinite(value)
        if self.interval and not (finite and _in_interval(value, self.interval)):
            where = "" if self.interval[0] in "<>" else "in "
            number = "" if finite else "a finite number "
            raise ConfigError(f"{self.key} must be {number}{where}{self.interval}, got {value}")


def setting(
    default: Any,
    help: str,  # noqa: A002  (the word the CLI uses)
    *,
    choices: tuple[str, ...] = (),
    prefix: str = "",
    interval: str = "",
    compress: bool = False,
    resume: bool = False,
    server_only: bool = False,
) -> Any:
    """A dataclass field carrying its declaration (see Setting)."""
    if interval:
        _in_interval(0, interval)  # a malformed interval fails at import, not at run time
    meta = {
        "help": help,
        "choices": choices,
        "prefix": prefix,
        "interval": interval,
        "compress": compress,
        "resume": resume,
        "server_only": server_only,
    }
    return dataclasses.field(default=default, metadata={"fedge": meta})


def settings_of(cls: type) -> dict[str, Setting]:
    """Every declared setting of a config dataclass, by kebab-case key, in declaration order."""
    out = {}
    for f in dataclasses.fields(cls):
        meta = f.metadata.get("fedge")
        if meta is None:
            continue
        kind = type(f.default)
        out[kebab(f.name)] = Setting(name=f.name, kind=kind, default=f.default, **meta)
    return out


def kebab(name: str) -> str:
    """snake_case -> kebab-case."""
    return name.replace("_", "-")


def coerce(key: str, value: Any, kind: type) -> Any:
    """Accept TOML/JSON types; ints where floats are expected. No parsing of strings."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is bool and not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if not isinstance(value, kind):
        raise ConfigError(f"{key} must be a {kind.__name__}, got {value!r}")
    return value


def parse_value(spec: Setting, text: str) -> Any:
    """A command-line value for `spec`: strings as given, others as TOML values."""
    if spec.kind is str:
        return text
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        word = {bool: "true or false", int: "an integer", float: "a number"}[spec.kind]
        where = f" ({spec.interval})" if spec.interval else ""
        raise ConfigError(f"{spec.key} must be {word}{where}, got {text!r}") from None
    return coerce(spec.key, value, spec.kind)


def parse_pairs(text: str, specs: dict[str, Setting]) -> dict[str, Any]:
    """`key=value key=value` (the syntax of `flwr run --run-config`) as typed settings.

    Quotes group a value with spaces; strings need no TOML quotes. A malformed pair or an
    unknown key is a ConfigError naming it.
    """
    try:
        tokens = shlex.split(text)
    except ValueError as err:
        raise ConfigError(f"--run-config {text!r} cannot be split into pairs: {err}") from None
    out: dict[str, Any] = {}
    for token in tokens:
        key, equals, value = token.partition("=")
        if not equals or not key:
            raise ConfigError(f"--run-config pair {token!r} is not key=value")
        out[key] = parse_value(lookup(key, specs), value)
    return out


def parse_flags(args: list[str], specs: dict[str, Setting]) -> dict[str, Any]:
    """`--key value` (and `--key` / `--no-key` for true/false settings) as typed settings."""
    out: dict[str, Any] = {}
    rest = list(args)
    while rest:
        token = rest.pop(0)
        if not token.startswith("--") or len(token) < 3:
            raise ConfigError(f"unexpected argument {token!r}; settings are given as --KEY VALUE")
        key, equals, value = token[2:].partition("=")
        negated = key.startswith("no-") and key not in specs and key[3:] in specs
        spec = lookup(key[3:] if negated else key, specs, flag=True)
        if negated and (spec.kind is not bool or equals):
            raise ConfigError(f"--{key}: only true/false settings have a --no- form")
        if spec.kind is bool and not equals:
            if rest and not rest[0].startswith("--") and not negated:
                value, equals = rest.pop(0), "="  # true, false, or a value refused below
            else:
                out[spec.key] = not negated
                continue
        if not equals:
            if not rest:
                raise ConfigError(f"--{key} needs a value ({spec.allowed()})")
            value = rest.pop(0)
        out[spec.key] = parse_value(spec, value)
    return out


def lookup(key: str, specs: dict[str, Setting], *, flag: bool = False) -> Setting:
    """The declaration of `key`, or a ConfigError listing the keys that exist."""
    if key in specs:
        return specs[key]
    shown = f"--{key}" if flag else repr(key)
    close = [k for k in specs if k.startswith(key[:4])] or list(specs)
    raise ConfigError(f"unknown setting {shown}; allowed: {', '.join(close)}")


def _in_interval(value: Any, interval: str) -> bool:
    """Whether a number lies in "(a, b]"-style or ">= a"-style interval text."""
    match = _INTERVAL.match(interval)
    if match:
        left, low, high, right = match.groups()
        above = value > float(low) if left == "(" else value >= float(low)
        below = value < float(high) if right == ")" else value <= float(high)
        return bool(above and below)
    bound = _BOUND.match(interval)
    if not bound:
        raise ValueError(f"malformed interval {interval!r}")
    op, limit = bound.group(1), float(bound.group(2))
    return bool(
        {">=": value >= limit, ">": value > limit, "<=": value <= limit, "<": value < limit}[op]
    )
