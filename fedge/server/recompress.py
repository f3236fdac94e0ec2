"""`fedge compress`: re-run the compression phase on a finished run's teacher, no retraining."""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from fedge.compression.bundle import PRIVATE_KEY_FILE, load_private_key, write_bundle
from fedge.compression.onnx_teacher import OnnxTeacher
from fedge.core.config import ConfigError, RunConfig
from fedge.core.io import atomic_write_bytes, atomic_write_json
from fedge.core.partition import build_federation
from fedge.server.compression_phase import CompressionConfig, run_compression
from fedge.server.report import render_compression_report
from fedge.server.shipping import ship

log = logging.getLogger("fedge")
RESULTS_FILE = "results.json"
TEACHER_FILE = "teacher.onnx"
# The settings `fedge compress` may change: everything else would change the teacher or the data.
COMPRESSION_SETTINGS = (
    "student",
    "kd-temperature",
    "kd-epochs",
    "prune-ratio",
    "finetune-epochs",
    "sparsity",
    "quant-format",
    "quant-per-channel",
    "quant-mode",
    "quant-calibration",
    "quant-calibration-samples",
    "int8-tolerance",
)


def compress_config(run_dir: Path, changes: dict[str, Any]) -> tuple[RunConfig, int]:
    """The finished run's config with compression settings changed, and the teacher's size.

    ConfigError if `run_dir` is not a finished run with a teacher, or a change is not a
    compression setting.
    """
    run_dir = Path(run_dir)
    for name in (RESULTS_FILE, TEACHER_FILE, f"keys/{PRIVATE_KEY_FILE}"):
        if not (run_dir / name).is_file():
            raise ConfigError(
                f"{run_dir} is not a finished fedge run with a teacher: {name} is missing"
            )
    try:
        source = json.loads((run_dir / RESULTS_FILE).read_text())
        stored, teacher_params = source["config"], source["teacher"]["params"]
    except (ValueError, KeyError, UnicodeDecodeError) as err:
        raise ConfigError(f"{run_dir / RESULTS_FILE} has no readable config: {err}") from err
    cfg = RunConfig.from_run_config({**stored, **changes})  # unknown keys and bad values
    bad = sorted(
        k for k, v in changes.items() if k not in COMPRESSION_SETTINGS and stored.get(k) != v
    )
    if bad:
        raise ConfigError(
            f"fedge compress cannot change {', '.join(bad)} (that needs a new run); "
            f"allowed: {', '.join(COMPRESSION_SETTINGS)}"
        )
    return cfg, int(teacher_params)


def default_out(run_dir: Path) -> Path:
    """Where a compression of `run_dir` goes by default: inside the run, one folder per call."""
    return Path(run_dir) / "compress" / datetime.now().strftime("%Y%m%d-%H%M%S")


def compress_run(run_dir: Path, cfg: RunConfig, out: Path, teacher_params: int) -> dict[str, Any]:
    """Compress the run's teacher with `cfg`'s settings into `out` (which must exist, empty)."""
    start = time.monotonic()
    run_dir = Path(run_dir)
    fed = build_federation(cfg)
    prep, classes = fed.dataset.preprocessing, fed.dataset.num_classes
    teacher_onnx = (run_dir / TEACHER_FILE).read_bytes()
    teacher = OnnxTeacher(teacher_onnx)
    compression = CompressionConfig.from_run(cfg)
    outcome = run_compression(
        teacher,
        fed.server.public_pool,
        fed.server.val,
        fed.server.test,
        compression,
        preprocessing=prep,
        num_classes=classes,
    )
    key = load_private_key(run_dir / "keys" / PRIVATE_KEY_FILE)
    shipment = ship(
        teacher_onnx,
        outcome,
        compression,
        fed.server.test,
        preprocessing=prep,
        num_classes=classes,
        key=key,
        model_id=run_dir.name,
    )
    write_bundle(shipment.files, out / "bundle")
    results = {
        "run_id": run_dir.name,
        "source_run": str(run_dir),
        "config": cfg.to_run_config(),
        "compression_config": compression.to_json(),
        "teacher": {**shipment.teacher, "params": teacher_params},
        "stages": outcome.stages,
        "student": shipment.student,
        "timing_s": {"compression": time.monotonic() - start},
    }
    atomic_write_json(out / RESULTS_FILE, results)
    atomic_write_bytes(out / "report.md", render_compression_report(results).encode())
    return results
