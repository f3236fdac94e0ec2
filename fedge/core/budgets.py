"""A device's budgets: batch-1 latency, and the exact resources flash, RAM (activation arena), MACs.

A tier of the `tiers` setting is `name:budget`, its budget either a number (batch-1 latency in
µs, as before) or `key=value` parts joined by `+`: `latency=2000`, `flash=64k`, `ram=64k`,
`macs=5m`. Bytes take k = 1024 and m = 1024^2 (the kB of microcontroller datasheets); MACs take
k = 1,000 and m = 1,000,000. The resources are exact properties of the shipped ONNX model
(fedge.compression.resources); latency is measured or predicted, with a margin stated where it
is checked.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any

KEYS = ("latency", "flash", "ram", "macs")
SUFFIXES = {"bytes": {"k": 1024, "m": 1024**2}, "macs": {"k": 1000, "m": 1000**2}}
NUMBER = re.compile(r"(\d+(?:\.\d+)?)([kKmM]?)")


class BudgetError(ValueError):
    """A budget that cannot be read; the message names the part and the format."""


@dataclass(frozen=True)
class Budget:
    """What a device allows; None: no limit on that."""

    latency_us: float | None = None  # batch-1 p50 of the onnxruntime call
    flash_bytes: int | None = None  # model.onnx as shipped
    ram_bytes: int | None = None  # peak live activations at batch 1 (the tensor arena)
    macs: int | None = None  # multiply-accumulates of one inference
    margin: float = 1.0  # latency_us is a budget divided by this (the server's headroom)

    def misses(
        self, latency_us: float | None, flash: int | None, ram: int | None, macs: int | None
    ) -> list[str]:
        """Each limit the figures exceed, as "flash 70,000 B > 65,536 B".

        An unknown figure (None) misses any limit set on it.
        """
        out = []
        for name, limit, value, unit in self._limits(latency_us, flash, ram, macs):
            if limit is None:
                continue
            if value is None:
                out.append(f"{name} unknown, limit {limit:,.0f} {unit}".rstrip())
            elif value > limit:
                out.append(f"{name} {value:,.0f} {unit} > {limit:,.0f} {unit}".replace("  ", " "))
        return out

    def excess(
        self, latency_us: float | None, flash: int | None, ram: int | None, macs: int | None
    ) -> float:
        """The largest figure / limit over the limits set (inf for an unknown figure; 0: none)."""
        ratios = [
            math.inf if value is None else value / limit
            for _, limit, value, _ in self._limits(latency_us, flash, ram, macs)
            if limit is not None
        ]
        return max(ratios, default=0.0)

    def overs(
        self, latency_us: float | None, flash: int | None, ram: int | None, macs: int | None
    ) -> list[float]:
        """Per limit, in KEYS order, how far the figure exceeds it (> 0: infeasible).

        Optuna's constraints: -1 where no limit is set, 1 for an unknown figure.
        """
        return [
            -1.0 if limit is None else 1.0 if value is None else float(value - limit)
            for _, limit, value, _ in self._limits(latency_us, flash, ram, macs)
        ]

    def _limits(
        self, latency_us: float | None, flash: int | None, ram: int | None, macs: int | None
    ) -> list[tuple[str, float | None, float | None, str]]:
        """(name, limit, figure, unit) for every key, in KEYS order."""
        return [
            ("latency", self.latency_us, latency_us, "µs"),
            ("flash", self.flash_bytes, flash, "B"),
            ("ram", self.ram_bytes, ram, "B"),
            ("macs", self.macs, macs, ""),
        ]

    @property
    def resources_only(self) -> bool:
        """True when no latency limit is set (the exact resources decide alone)."""
        return self.latency_us is None

    def describe(self) -> str:
        """The limits in words, e.g. "flash 64 KiB, ram 64 KiB" or "latency 2000 µs"."""
        parts = []
        if self.latency_us is not None and self.margin != 1.0:
            given = self.latency_us * self.margin
            parts.append(f"latency {given:g} µs / margin {self.margin:g} = {self.latency_us:g} µs")
        elif self.latency_us is not None:
            parts.append(f"latency {self.latency_us:g} µs")
        for name, value in (("flash", self.flash_bytes), ("ram", self.ram_bytes)):
            if value is not None:
                parts.append(f"{name} {_bytes(value)}")
        if self.macs is not None:
            parts.append(f"macs {self.macs:,}")
        return ", ".join(parts)

    def to_json(self) -> dict[str, Any]:
        """The budget as results.json and tiers.json hold it."""
        return asdict(self)

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Budget:
        """The budget to_json wrote."""
        keys = ("latency_us", "flash_bytes", "ram_bytes", "macs")
        return cls(**{k: value.get(k) for k in keys}, margin=value.get("margin", 1.0))


def parse_budget(text: str) -> Budget:
    """`2000` (latency µs) or `flash=64k+ram=64k+latency=2000+macs=5m` (BudgetError if bad)."""
    text = text.strip()
    if "=" not in text:
        return Budget(latency_us=_positive(text, "latency", float))
    found: dict[str, Any] = {}
    for part in text.split("+"):
        key, _, value = part.strip().partition("=")
        if key not in KEYS or key in found:
            raise BudgetError(
                f"budget part {part.strip()!r}: keys are {', '.join(KEYS)}, each at most once"
            )
        kind = "macs" if key == "macs" else "bytes"
        found[key] = _positive(value, key, float) if key == "latency" else _count(value, key, kind)
    return Budget(found.get("latency"), found.get("flash"), found.get("ram"), found.get("macs"))


def _positive(text: str, key: str, kind: type[float]) -> float:
    try:
        value = kind(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise BudgetError(f"{key} {text!r} must be a finite number > 0")
    return value


def _count(text: str, key: str, kind: str) -> int:
    match = NUMBER.fullmatch(text.strip())
    if not match:
        raise BudgetError(
            f"{key} {text!r} must be a number with an optional k or m suffix, e.g. 64k"
        )
    value = float(match[1]) * SUFFIXES[kind].get(match[2].lower(), 1)
    if value < 1:
        raise BudgetError(f"{key} {text!r} must be at least 1")
    return int(value)


def _bytes(value: int) -> str:
    return f"{value // 1024} KiB" if value % 1024 == 0 else f"{value:,} B"
