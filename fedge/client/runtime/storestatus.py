"""What `fedge status` shows of a model store: each part read on its own, damage reported."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedge.client.runtime import rollback
from fedge.client.runtime.files import UnsafeFileError
from fedge.client.runtime.storestate import (
    STATE_FILE,
    HistoryEntry,
    StateError,
    StoreState,
    read_state,
)
from fedge.client.runtime.verify import BundleError


def status_report(root: Path, current_version: Callable[[], int | None]) -> dict[str, Any]:
    """Current version, model line, high-water mark, versions on disk, history, last refusal.

    Never raises for a damaged store: `damaged` lists one line per damaged file or entry
    outside the history; a damaged history entry or refusal is `{"damaged": reason}`.
    """
    damaged: list[str] = []
    try:
        current = current_version()
    except BundleError as err:
        current = None
        damaged.append(str(err).split(": ", 1)[-1])  # without "store check failed: "
    path = root / STATE_FILE
    try:
        state, damage = read_state(path)
    except UnsafeFileError as err:
        state, damage = StoreState(), str(err)
    damaged += [damage] if damage else []
    scan = rollback.scan_versions(root / rollback.VERSIONS_DIR)
    damaged += scan.problems
    try:
        refusal: dict[str, Any] | None = state.refusal()
    except StateError as err:
        damaged.append(f"{path} {err}")
        refusal = {"damaged": damaged[-1]}
    history = [
        entry.to_json() if isinstance(entry, HistoryEntry) else {"damaged": f"{path} {entry}"}
        for entry in state.entries()
    ]
    return {
        "model_dir": str(root),
        "current_version": current,
        "model_id": state.model_id,
        "highest_version": state.highest_version,
        "installed_versions": scan.versions,
        "history": history,
        "last_refusal": refusal,
        "damaged": damaged,
    }
