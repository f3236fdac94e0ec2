"""Helpers for the e2e tests: `fedge` as a subprocess, and the device CLI with torch blocked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "simulations" / "tiny.toml")

# Run fedge with torch and flwr unimportable: the device path must not need them.
NO_TORCH = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("torch", "flwr", "onnx", "sklearn"):
            raise ImportError(f"{name} is blocked on this device")
sys.meta_path.insert(0, Block())
sys.argv = ["fedge", *sys.argv[1:]]
from fedge.cli import main
main()
"""


def fedge(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m fedge ARGS` in `cwd`, whose HOME and FLWR_HOME lie inside `cwd`; `env`: more."""
    # HOME inside the test's directory: the default run directory (~/fedge-runs) lands there.
    env = {
        **os.environ,
        "FLWR_HOME": str(cwd / "flwr-home"),
        "HOME": str(cwd / "home"),
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "fedge", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,  # bounds a hang, not a speed
    )


def fedge_no_torch(*args: str, **kwargs) -> subprocess.CompletedProcess:
    """`fedge ARGS` with torch, flwr, onnx and sklearn unimportable."""
    return subprocess.run(
        [sys.executable, "-c", NO_TORCH, *args],
        capture_output=True,
        text=True,
        timeout=120,  # bounds a hang, not a speed
        **kwargs,
    )


def one_line(text: str) -> str:
    """What a terminal shows, whatever the wrapping (rich wraps at 80 columns off a terminal)."""
    return " ".join(text.split())
