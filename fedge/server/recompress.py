"""`fedge compress`: re-run the compression phase on a finished run's teacher, no retraining."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from fedge.compression.bundle import PRIVATE_KEY_FILE, load_private_key, write_bundle
from fedge.compression.onnx_teacher import OnnxTeacher
from fedge.core.config import STUDENTS, ConfigError, RunConfig
from fedge.core.io import atomic_write_bytes, atomic_write_json
from fedge.core.ort import make_session, session_accuracy
from fedge.core.partition import build_federation
from fedge.server.compression_phase import CompressionConfig, run_compression
from fedge.server.report import render_compression_report
from fedge.server.run import RESULTS_FILE, TEACHER_FILE
from fedge.server.shipping import ship

log = logging.getLogger("fedge")
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


@dataclass(frozen=True)
class Choice:
    """Automatic student choice (at most one of the two limits).

    The smallest student within `max_accuracy_drop` validation points of the teacher, or the
    most accurate one within `max_bytes`.
    """

    max_accuracy_drop: float | None = None  # points
    max_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.max_accuracy_drop is not None and self.max_bytes is not None:
            raise ConfigError("give --max-accuracy-drop or --max-bytes, not both")
        if self.max_accuracy_drop is not None and self.max_accuracy_drop < 0:
            raise ConfigError(f"max-accuracy-drop must be >= 0, got {self.max_accuracy_drop}")
        if self.max_bytes is not None and self.max_bytes < 1:
            raise ConfigError(f"max-bytes must be >= 1, got {self.max_bytes}")

    @property
    def active(self) -> bool:
        """Whether a choice was asked for."""
        return self.max_accuracy_drop is not None or self.max_bytes is not None


def compress_run(
    run_dir: Path,
    cfg: RunConfig,
    out: Path,
    teacher_params: int,
    choice: Choice = Choice(),
) -> dict[str, Any]:
    """Compress the run's teacher with `cfg`'s settings into `out` (which must exist, empty).

    With an active `choice`, students from STUDENTS (smallest first) are compressed with the
    other settings and the choice is made on the validation split (the device model on raw
    input); ConfigError if no student satisfies it.
    """
    start = time.monotonic()
    run_dir = Path(run_dir)
    fed = build_federation(cfg)
    prep, classes = fed.dataset.preprocessing, fed.dataset.num_classes
    teacher_onnx = (run_dir / TEACHER_FILE).read_bytes()
    teacher = OnnxTeacher(teacher_onnx)
    val = fed.server.val
    teacher_val = session_accuracy(teacher.session, val.x, val.y)
    raw_val = prep.invert(val.x)
    candidates = []
    for student in STUDENTS if choice.active else (cfg.student,):
        trial = cfg.replace(student=student)
        compression = CompressionConfig.from_run(trial)
        outcome = run_compression(
            teacher,
            fed.server.public_pool,
            val,
            fed.server.test,
            compression,
            preprocessing=prep,
            num_classes=classes,
        )
        val_acc = session_accuracy(make_session(outcome.student_bytes), raw_val, val.y)
        row: dict[str, Any] = {
            "student": student,
            "val_accuracy": val_acc,
            "drop_pt": (teacher_val - val_acc) * 100,
            "bytes": len(outcome.student_bytes),
        }
        candidates.append((row, trial, compression, outcome))
        log.info("candidate %-11s validation %.4f  bytes %d", student, val_acc, row["bytes"])
        if choice.max_accuracy_drop is not None and row["drop_pt"] <= choice.max_accuracy_drop:
            break
    row, cfg, compression, outcome = _choose(candidates, choice)
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
        "choice": {
            "max_accuracy_drop_pt": choice.max_accuracy_drop,
            "max_bytes": choice.max_bytes,
            "teacher_val_accuracy": teacher_val,
            "candidates": [c[0] for c in candidates],
            "chosen": row["student"],
        },
    }
    atomic_write_json(out / RESULTS_FILE, results)
    atomic_write_bytes(out / "report.md", render_compression_report(results).encode())
    return results


def _choose(candidates: list[Any], choice: Choice) -> Any:
    """The candidate the choice asks for (the only one without a choice)."""
    if not choice.active:
        return candidates[0]
    rows = ", ".join(
        f"{c[0]['student']} {c[0]['drop_pt']:.2f} pt / {c[0]['bytes']} B" for c in candidates
    )
    if choice.max_accuracy_drop is not None:
        within = [c for c in candidates if c[0]["drop_pt"] <= choice.max_accuracy_drop]
        if not within:
            raise ConfigError(
                f"no student is within max-accuracy-drop={choice.max_accuracy_drop} points of "
                f"the teacher on validation (tried: {rows})"
            )
        return within[0]
    fits = [c for c in candidates if c[0]["bytes"] <= (choice.max_bytes or 0)]
    if not fits:
        raise ConfigError(f"no student fits max-bytes={choice.max_bytes} (tried: {rows})")
    return max(fits, key=lambda c: (c[0]["val_accuracy"], -c[0]["bytes"]))
