"""The Python API for notebooks and scripts: `fedge.simulate(...)` and `fedge.compress(...)`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedge.core.config import RunConfig
from fedge.core.settings import kebab


def simulate(scenario: str | Path | None = None, **settings: Any) -> dict[str, Any]:
    """Run `fedge simulate` in this process and return its results (results.json as a dict).

    Settings are keyword arguments in snake_case (`fedge.simulate(rounds=3, kd_epochs=100)`),
    applied after the scenario file. The run directory is `results["run_dir"]`. Bad settings
    raise ConfigError before anything is written.
    """
    from fedge.simulations import runner
    from fedge.simulations.runner import build_config, load_scenario, preflight

    requested = load_scenario(Path(scenario)) if scenario is not None else {}
    requested.update({kebab(k): v for k, v in settings.items()})
    if requested.get("out"):
        requested["out"] = str(Path(requested["out"]).expanduser().resolve())
    cfg = build_config(requested)
    preflight(cfg)
    run_dir = runner.simulate(cfg)
    return {**json.loads((run_dir / "results.json").read_text()), "run_dir": str(run_dir)}


def compress(run_dir: str | Path, out: str | Path | None = None, **settings: Any) -> dict[str, Any]:
    """Re-compress a finished run's teacher with changed compression settings (no retraining).

    Returns the new results (results.json as a dict, with "out"); writes the signed bundle,
    results.json and report.md to `out` (default RUN_DIR/compress/<time>).
    """
    from fedge.pipeline.ship.recompress import CompressRequest, compress_into

    changes = {kebab(k): v for k, v in settings.items()}
    target, results = compress_into(
        Path(run_dir), CompressRequest(changes), Path(out) if out else None
    )
    return {**results.to_json(), "out": str(target)}


__all__ = ["RunConfig", "compress", "simulate"]
