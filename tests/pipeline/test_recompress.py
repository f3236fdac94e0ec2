"""`fedge compress`: which setting changes need student rounds the run's clients never ran."""

from __future__ import annotations

import pytest

from fedge.core.config import RunConfig
from fedge.pipeline.ship.recompress import _federated_changes

RUN = RunConfig(student="deep-small", tiers="", kd_source="both")


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"student": "tiny"}, ["student"]),
        ({"kd_epochs": 7, "quant_mode": "dynamic"}, ["kd-epochs"]),  # quantization comes after
        ({"student_lr": 0.1, "int8_tolerance": 0.5}, ["student-lr"]),
        ({"prune_ratio": 0.3}, ["prune-ratio"]),
        ({"kd_lr": 0.01}, ["kd-lr"]),  # a setting added with its stage config: counted
        ({"teacher_mode": "ensemble"}, ["teacher-mode"]),  # another teacher, same settings
        ({"qat": "always", "quant_format": "qoperator"}, []),
    ],
)
def test_only_settings_that_reach_the_federate_stage_need_new_rounds(changes, expected):
    assert _federated_changes(RUN.replace(**changes), RUN) == expected


def test_auto_students_count_through_the_candidates_they_make():
    auto = RUN.replace(student="auto")
    assert _federated_changes(auto.replace(auto_students="deep-small,tiny"), auto) == [
        "auto-students"
    ]
    assert _federated_changes(auto.replace(auto_max_drop=2.0), auto) == []
