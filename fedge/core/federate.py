"""The student's federated rounds' settings: built from the run on the server, sent as one record.

The server builds a FederateConfig from the run's settings (the compression chain's federate
stage), sends it to the clients as a record of its own (`federate`), and each client trains
the student with exactly these settings: no run setting is copied under another name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedge.core.config import RunConfig
from fedge.core.plain import from_plain, to_plain
from fedge.core.settings import kebab


@dataclass(frozen=True)
class FederateConfig:
    """Rounds of student training on the clients."""

    student: str  # the architecture clients rebuild from the weights they receive (student)
    rounds: int  # 0: the stage is off (kd-source public) (student-rounds)
    epochs: int  # client epochs per round (student-epochs)
    lr: float  # client SGD learning rate (student-lr)
    alpha: float  # weight of the teacher term against the labels (kd-alpha)
    temperature: float  # KD temperature (kd-temperature)
    soft: bool  # the teacher's tempered probabilities, else its top class (kd-labels)
    batch_size: int  # client batch size (batch-size)
    sample_budget: int = 0  # samples per client and round at most; 0: no cap (local-sample-budget)

    def __post_init__(self) -> None:
        if self.rounds < 0 or self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"invalid federate config: {self}")
        if not (self.lr > 0 and self.temperature > 0 and 0 <= self.alpha <= 1):
            raise ValueError(f"invalid federate config: {self}")

    @classmethod
    def from_run(cls, cfg: RunConfig) -> FederateConfig:
        """The rounds a run's settings describe (none when the student learns on the pool only)."""
        return cls(
            student=cfg.student,
            rounds=cfg.student_rounds if cfg.distill_from != "public" else 0,
            epochs=cfg.student_epochs,
            lr=cfg.student_lr,
            alpha=cfg.kd_alpha,
            temperature=cfg.kd_temperature,
            soft=cfg.kd_labels == "soft",
            batch_size=cfg.batch_size,
            sample_budget=cfg.local_sample_budget,
        )

    def to_wire(self) -> dict[str, Any]:
        """The values of the record clients receive (kebab-case keys, as on every wire)."""
        return {kebab(k): v for k, v in to_plain(self).items()}

    @classmethod
    def from_wire(cls, values: Mapping[str, Any]) -> FederateConfig:
        """Inverse of to_wire; ValueError naming the field that is missing or malformed."""
        plain = {str(k).replace("-", "_"): v for k, v in values.items()}
        try:
            return from_plain(cls, plain, "federate config")
        except TypeError as err:
            raise ValueError(f"federate config: {err}") from None
