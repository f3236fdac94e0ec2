"""Per-round metrics of a run as TensorBoard event files (RUN/tensorboard)."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

TENSORBOARD_DIR = "tensorboard"
# Numbers of a round row worth a curve (others, e.g. lists of clients, are not scalars).
SCALARS = (
    "accuracy",
    "loss",
    "train_loss",
    "clients_ok",
    "uplink_bytes",
    "downlink_bytes",
    "seconds",
    "dp_epsilon",
    "dp_clipping_norm",
)


class RoundScalars:
    """Writes each finished round's numbers under `<phase>/<name>` (teacher, student)."""

    def __init__(self, run_dir: Path) -> None:
        # TensorBoard imports all of TensorFlow (when the litert extra installed it: about
        # 4 s and 670 MB more in the server process) unless `tensorboard.compat.notf` exists,
        # its own switch to the stub it writes event files with; that stub is all we need.
        sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("notf"))
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / TENSORBOARD_DIR))

    def __call__(self, phase: str, row: dict[str, Any]) -> None:
        """Add one round's row (a results.json rounds[] entry) and flush it to disk."""
        for name in SCALARS:
            value = row.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"{phase}/{name}", value, row["round"])
        self.writer.flush()

    def close(self) -> None:
        """Close the event file."""
        self.writer.close()
