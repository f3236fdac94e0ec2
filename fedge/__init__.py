"""fedge: federated edge-cloud learning with compressed, signed model redistribution."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("fedge")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"


def simulate(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Run a federated simulation end to end; see fedge.api.simulate (imports torch on call)."""
    from fedge import api

    return api.simulate(*args, **kwargs)


def compress(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Re-compress a finished run's teacher; see fedge.api.compress (imports torch on call)."""
    from fedge import api

    return api.compress(*args, **kwargs)
