"""The typed run configuration: built once from Flower's run_config, validated, kebab on the wire."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedge.core import choices, config_rules
from fedge.core.budgets import Budget
from fedge.core.settings import ConfigError, coerce, kebab, lookup, settings_of
from fedge.core.settings_compression import CompressionSettings
from fedge.core.settings_federation import FederationSettings


@dataclass(frozen=True)
class RunConfig(CompressionSettings, FederationSettings):
    """Every setting of one fedge run, each declared once (fedge.core.settings.setting).

    The declarations live by topic in settings_federation.py and settings_compression.py;
    this class adds validation and what is derived from them.
    """

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first bad value and what is allowed."""
        if self.dataset not in choices.DATASETS and not self.dataset.startswith("npz:"):
            allowed = ", ".join(choices.DATASETS)
            raise ConfigError(f"unknown dataset {self.dataset!r}; allowed: {allowed}, npz:PATH")
        for spec in SETTINGS.values():
            spec.check(getattr(self, spec.name))
        config_rules.check(self)

    def incompatible_with(self, other: RunConfig) -> list[str]:
        """Settings (kebab-case) that differ and that a resumed run may not change."""
        mine, theirs = self.to_run_config(), other.to_run_config()
        return [k for k in mine if not SETTINGS[k].resume and mine[k] != theirs[k]]

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> RunConfig:
        """Build from kebab-case keys (Flower run_config, scenario files, CLI flags).

        ConfigError for anything but a mapping (a stored config is read from files).
        """
        if not isinstance(run_config, Mapping):
            raise ConfigError(
                f"a run config is a table of settings, got {type(run_config).__name__}"
            )
        kwargs: dict[str, Any] = {}
        for key, value in run_config.items():
            spec = lookup(key, SETTINGS)
            kwargs[spec.name] = coerce(key, value, spec.kind)
        return cls(**kwargs)

    def to_run_config(self) -> dict[str, Any]:
        """Kebab-case dict: the inverse of from_run_config (JSON and ConfigRecord friendly)."""
        return {kebab(k): v for k, v in dataclasses.asdict(self).items()}

    def replace(self, **changes: Any) -> RunConfig:
        """Return a copy with snake_case fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @property
    def distill_from(self) -> str:
        """kd-source with auto resolved: both (public under DP without dp-teacher-epsilon).

        Under DP, auto trains the student's rounds only when dp-teacher-epsilon leaves them
        part of the budget.
        """
        if self.kd_source != "auto":
            return self.kd_source
        return "both" if self.dp == "none" or self.dp_teacher_epsilon > 0 else "public"

    def one_public_student(self) -> RunConfig:
        """These settings for one student distilled on the public pool: no tiers.

        What a search's trials and finalists, a tier's student and its audit replay run.
        """
        return self.replace(kd_source="public", tiers="")

    @property
    def tier_budgets(self) -> dict[str, Budget]:
        """The tiers setting as name -> budget (latency and resources), in the order given."""
        return config_rules.parse_tiers(self.tiers)

    @property
    def auto_candidates(self) -> tuple[str, ...]:
        """auto-students as names, in the order given."""
        names = tuple(name.strip() for name in self.auto_students.split(",") if name.strip())
        if not names:
            raise ConfigError("auto-students must name at least one student")
        return names

    @property
    def npz_path(self) -> Path | None:
        """The user's data file when dataset is npz:PATH."""
        return Path(self.dataset[4:]) if self.dataset.startswith("npz:") else None


SETTINGS = settings_of(RunConfig)  # kebab-case key -> its declaration
COMPRESSION_SETTINGS = tuple(k for k, spec in SETTINGS.items() if spec.compress)
SERVER_ONLY_SETTINGS = tuple(k for k, spec in SETTINGS.items() if spec.server_only)
