"""An energy estimate per inference from MACs and memory traffic: a labelled estimate, not a measure.

    energy = MACs x (pJ per MAC, int8 or fp32) + traffic bytes x (pJ per byte)

Default coefficients: Horowitz, "Computing's energy problem", ISSCC 2014, 45 nm: an 8-bit
integer multiply and add 0.2 + 0.03 pJ, a 32-bit float multiply and add 3.7 + 0.9 pJ, a 64-bit
read from an 8 KB SRAM 10 pJ (1.25 pJ per byte). Real devices differ by several times (process
node, DRAM vs SRAM, voltage); a device profile may carry its own in `device.energy`
(`pj_per_mac_int8`, `pj_per_mac_fp32`, `pj_per_byte`, `source`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fedge.compression.resources import Resources

if TYPE_CHECKING:  # the estimate needs only a profile's numbers, not the predictor's imports
    from fedge.compression.latency import LatencyModel


@dataclass(frozen=True)
class EnergyModel:
    """Energy per operation; `source` says where the figures come from."""

    pj_per_mac_int8: float = 0.23
    pj_per_mac_fp32: float = 4.6
    pj_per_byte: float = 1.25
    source: str = "Horowitz ISSCC 2014, 45 nm (int8 MAC 0.23 pJ, fp32 MAC 4.6 pJ, SRAM 1.25 pJ/B)"

    @classmethod
    def from_device(cls, device: dict[str, Any]) -> EnergyModel:
        """The coefficients of a profile's `device.energy`, the defaults where it says nothing.

        ValueError for a coefficient that is not a finite number >= 0.
        """
        given = device.get("energy") or {}
        if not isinstance(given, dict):
            raise ValueError("device.energy must be an object of pJ coefficients")
        values: dict[str, Any] = {}
        for key in ("pj_per_mac_int8", "pj_per_mac_fp32", "pj_per_byte"):
            if key in given:
                value = given[key]
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ValueError(f"device.energy.{key} must be a number, got {value!r}")
                if not (math.isfinite(value) and value >= 0):
                    raise ValueError(f"device.energy.{key} must be finite and >= 0")
                values[key] = float(value)
        if values:
            values["source"] = str(given.get("source", "the device profile"))[:200]
        return cls(**values)

    def microjoules(self, resources: Resources, int8: bool) -> float | None:
        """The estimate for one inference at batch 1 (None without measured traffic)."""
        if not resources.traffic_bytes:
            return None
        per_mac = self.pj_per_mac_int8 if int8 else self.pj_per_mac_fp32
        return (resources.macs * per_mac + resources.traffic_bytes * self.pj_per_byte) / 1e6


DEFAULT = EnergyModel()


def energy_model(target: LatencyModel | None) -> EnergyModel:
    """The coefficients of a search target's device profile (the defaults without one)."""
    return DEFAULT if target is None else EnergyModel.from_device(target.profile.device)


def estimate_uj(
    resources: Resources | None, int8: bool, target: LatencyModel | None = None
) -> float | None:
    """The estimate on the target's coefficients (None without measured resources)."""
    return None if resources is None else energy_model(target).microjoules(resources, int8)
