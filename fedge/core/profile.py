"""Device profiles: what a device is and how fast it runs the probe models (torch-free).

`fedge profile` writes one on the device (fedge.client.runtime.profile); the server reads it
to predict a candidate student's latency on that device (fedge.compression.latency). The probe
models ship inside the package (fedge/client/runtime/probes/, listed with their sha256 in
index.json), so a profile names probes, not files, and a probe changed by another fedge
version is refused rather than silently mismatched.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VERSION = 1
PROBE_DIR = Path(__file__).resolve().parent.parent / "client" / "runtime" / "probes"
INDEX = PROBE_DIR / "index.json"


PLAUSIBLE_US = (0.01, 1e6)  # a probe's p50 per sample: a probe runs in µs to ms anywhere


class ProfileError(ValueError):
    """A profile that is malformed, from another version, or measured other probes."""


@dataclass(frozen=True)
class Profile:
    """A device profile: facts, how it was measured, and each probe's p50 per batch size."""

    device: dict[str, Any]
    threads: int
    batches: tuple[int, ...]
    latency_us: dict[str, dict[int, float]]  # probe name -> batch -> p50 microseconds
    path: str = ""

    @property
    def name(self) -> str:
        """A short label: the device's given name, else its CPU."""
        return str(self.device.get("name") or self.device.get("cpu") or "device")


def probe_index() -> dict[str, dict[str, Any]]:
    """The probes this fedge ships: name -> {file, sha256, input_shape, precision}."""
    data: dict[str, dict[str, Any]] = json.loads(INDEX.read_text())["probes"]
    return data


def load_profile(path: Path | str) -> Profile:
    """Read and check a profile; ProfileError naming the file and what is wrong."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ProfileError(f"cannot read device profile {path}: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise ProfileError(f"device profile {path} is not JSON: {err}") from None
    return parse_profile(text, str(path))


def parse_profile(text: str, source: str) -> Profile:
    """A profile from its JSON text (a node's query.profile reply); ProfileError naming `source`."""
    try:
        return _parse(json.loads(text), source)
    except json.JSONDecodeError as err:
        raise ProfileError(f"device profile {source} is not JSON: {err}") from None
    except RecursionError:  # a hostile or broken file: [[[[...]]]]
        raise ProfileError(f"device profile {source} nests arrays or objects too deeply") from None
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as err:
        if isinstance(err, ProfileError):
            raise
        raise ProfileError(f"device profile {source} is malformed: {err!r}") from None


def _parse(data: Any, path: str) -> Profile:
    version = data.get("fedge_profile") if isinstance(data, dict) else None
    if version != VERSION:
        raise ProfileError(
            f"device profile {path} has version {version!r}; this fedge reads version {VERSION} "
            "(run fedge profile again with this version)"
        )
    known = probe_index()
    latency: dict[str, dict[int, float]] = {}
    for name, row in data["probes"].items():
        if name not in known or row["sha256"] != known[name]["sha256"]:
            raise ProfileError(
                f"device profile {path} measured probe {name!r}, which this fedge does not ship "
                "(or ships changed); run fedge profile again with this version"
            )
        latency[name] = {int(b): float(v["p50_us"]) for b, v in row["batches"].items()}
    batches = tuple(int(b) for b in data["batches"])
    if 1 not in batches:
        raise ProfileError(f"device profile {path} lacks batch 1 (batches {list(batches)})")
    for name, per_batch in latency.items():
        values = list(per_batch.values())
        if set(per_batch) != set(batches) or not all(math.isfinite(v) and v > 0 for v in values):
            raise ProfileError(f"device profile {path}: probe {name!r} lacks a positive latency")
        low, high = PLAUSIBLE_US
        if not all(low <= v <= high * b for b, v in per_batch.items()):
            raise ProfileError(
                f"device profile {path}: probe {name!r} claims {sorted(values)} µs; allowed: "
                f"{low:g} µs to {high:g} µs per sample (a probe is a small model)"
            )
    missing = sorted(set(known) - set(latency))
    if missing:  # a partial set leaves columns of the fit empty (e.g. int8 work looks free)
        raise ProfileError(
            f"device profile {path} lacks probes {', '.join(missing[:3])}"
            + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            + "; run fedge profile again with this version"
        )
    threads = int(data["threads"])
    if threads != 1:  # the device runtime runs one intra-op thread (client/runtime/session.py)
        raise ProfileError(
            f"device profile {path} was measured with {threads} threads; the device runtime "
            "runs 1: run fedge profile without --threads"
        )
    return Profile(dict(data["device"]), threads, batches, latency, path)
