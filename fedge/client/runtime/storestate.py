"""state.json of a model store as checked values: the whole file, each install, the last refusal."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fedge.client.runtime.files import UnsafeFileError, read_bounded
from fedge.core import bundle_format as fmt

STATE_FILE = "state.json"
MAX_STATE_BYTES = 1 << 20  # state.json holds 20 installs and one refusal: far less
HISTORY = 20  # installs remembered in state.json
FIELDS = ("highest_version", "model_id", "history", "last_refusal")
REFUSAL_TEXT = ("time", "check", "reason")  # what every recorded refusal says
REFUSAL_CLAIMS = {"claimed_version": int, "claimed_model_id": str}  # what it may add


class StateError(ValueError):
    """state.json, or one entry in it, is damaged; the message says what is wrong in one line."""


@dataclass(frozen=True)
class HistoryEntry:
    """One install: version and model line, when (ISO 8601), the sha256 of its model."""

    version: int
    model_id: str
    installed: str
    sha256: str
    device_check: dict[str, Any] | None = None  # what the install check measured, if it ran

    def to_json(self) -> dict[str, Any]:
        """The entry as state.json stores it."""
        entry = asdict(self)
        if self.device_check is None:
            del entry["device_check"]
        return entry

    @classmethod
    def from_json(cls, raw: object) -> HistoryEntry:
        """The checked entry; StateError saying what is wrong with it."""
        if not isinstance(raw, dict):
            raise StateError(f"is {_kind(raw)}, not an object")
        names = ("version", "model_id", "installed", "sha256")
        missing = [name for name in names if name not in raw]
        if missing:
            raise StateError(f"lacks {', '.join(missing)}")
        if not is_version(raw["version"]):
            raise StateError(f"version {_show(raw['version'])} is not a version number")
        wrong = [name for name in names[1:] if not isinstance(raw[name], str)]
        if wrong:
            raise StateError(f"{', '.join(wrong)} must be text")
        check = raw.get("device_check")
        if check is not None and not isinstance(check, dict):
            raise StateError(f"device_check is {_kind(check)}, not an object")
        return cls(raw["version"], raw["model_id"], raw["installed"], raw["sha256"], check)


@dataclass
class StoreState:
    """What state.json holds: one witness of the rollback floor and the model line, the history.

    `history` and `last_refusal` are kept as stored, so that a damaged entry is shown as
    damaged (`entries`, `refusal`) and kept as evidence rather than dropped or trusted.
    """

    highest_version: int | None = None  # the highest version ever made current
    model_id: str | None = None  # the model line of that version
    history: list[Any] = field(default_factory=list)  # HistoryEntry.to_json() values
    last_refusal: Any = None  # see `refusal`

    def to_json(self) -> bytes:
        """The bytes of state.json."""
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> StoreState:
        """The checked state; StateError naming what is wrong with the file as a whole."""
        try:
            value = json.loads(data, parse_constant=_no_constant)
        except (ValueError, RecursionError) as err:
            detail = "nests too deeply" if isinstance(err, RecursionError) else str(err)[:80]
            raise StateError(f"is not JSON ({detail})") from None
        if not isinstance(value, dict):
            raise StateError(f"is {_kind(value)}, not an object")
        unknown = sorted(set(value) - set(FIELDS))
        if unknown:
            raise StateError(f"has unknown fields {', '.join(map(_show, unknown[:3]))}")
        state = cls(**value)
        highest, model_id = state.highest_version, state.model_id
        if highest is not None and not is_version(highest):
            raise StateError(f"highest_version {_show(highest)} is not a version number")
        if model_id is not None and (not isinstance(model_id, str) or not model_id):
            raise StateError(f"model_id {_show(model_id)} is not a model line")
        if (highest is None) != (model_id is None):
            raise StateError("highest_version and model_id must be given together")
        if not isinstance(state.history, list):
            raise StateError(f"history is {_kind(state.history)}, not a list")
        return state

    def entries(self) -> list[HistoryEntry | StateError]:
        """Each install, oldest first; a damaged one as the StateError that says why."""
        out: list[HistoryEntry | StateError] = []
        for i, raw in enumerate(self.history):
            try:
                out.append(HistoryEntry.from_json(raw))
            except StateError as err:
                out.append(StateError(f"history[{i}] {err}"))
        return out

    def refusal(self) -> dict[str, Any] | None:
        """The last refusal (time, check, reason, maybe claims); StateError if it is damaged."""
        raw = self.last_refusal
        if raw is None:
            return None
        if not isinstance(raw, dict):
            raise StateError(f"last_refusal is {_kind(raw)}, not an object")
        for name in REFUSAL_TEXT:
            if not isinstance(raw.get(name), str):
                raise StateError(f"last_refusal.{name} is missing or not text")
        for name, value in raw.items():
            kind = REFUSAL_CLAIMS.get(name)
            if name not in REFUSAL_TEXT and (kind is None or type(value) is not kind):
                raise StateError(f"last_refusal.{_show(name)} is unknown or of the wrong type")
        return dict(raw)


def read_state(path: Path) -> tuple[StoreState, str | None]:
    """The state at `path`, or an empty state and a line saying why that file is not used.

    Missing is a new store (no line); damaged content is a line naming the file and what is
    wrong. UnsafeFileError when `path` is a symlink, a directory or otherwise unreadable.
    """
    try:
        return StoreState.from_json(read_bounded(path, MAX_STATE_BYTES)), None
    except StateError as err:
        return StoreState(), f"{path} is damaged: {err}"
    except UnsafeFileError as err:
        if err.reason == "missing":
            return StoreState(), None
        if err.reason == "size":
            return StoreState(), str(err)
        raise


def is_version(value: object) -> bool:
    """True for a version number as manifests have them (an int in 1..MAX_VERSION, not a bool)."""
    return type(value) is int and 1 <= value <= fmt.MAX_VERSION


def _show(value: object) -> str:
    """A short repr for a message (stored values may be huge)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _kind(value: object) -> str:
    names: dict[type, str] = {dict: "an object", list: "a list", str: "text"}
    return names.get(type(value), _show(value))


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")
