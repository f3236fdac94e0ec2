"""The sweep grid, the Pareto flags and the choice rules, on hand-made rows."""

import dataclasses

import pytest

from fedge.compression.resources import Resources
from fedge.core.config import ConfigError, RunConfig
from fedge.pipeline.outputs.rows import CandidateRow
from fedge.pipeline.ship.candidates import Candidate, Choice, SweepGrid, choose, pareto
from fedge.pipeline.ship.sweep_output import COLUMNS, sweep_table


def _rows() -> list[dict]:
    # (val_accuracy, bytes, b1_us, drop_pt) for a teacher at 0.95 validation accuracy
    figures = [(0.94, 9000, 30.0), (0.93, 5000, 20.0), (0.90, 3000, 25.0), (0.92, 6000, 40.0)]
    return [
        {"student": "tiny", "prune_ratio": 0.0, "quant": "fp32"}
        | {"val_accuracy": a, "bytes": b, "b1_us": t, "drop_pt": (0.95 - a) * 100}
        for a, b, t in figures
    ]


def _candidates() -> list[Candidate]:
    common = {"quantized": False, "params": 1, "gzip_bytes": 1, "test_accuracy": 0.9}
    rows = [
        CandidateRow(**row, **common, b64_us=1.0, teacher_b1_us=None, teacher_b64_us=None)
        for row in _rows()
    ]
    return [Candidate(row, RunConfig(), None, None) for row in rows]  # type: ignore[arg-type]


def test_pareto_flags_exactly_the_undominated_rows():
    rows = _rows()
    assert pareto(rows, "bytes") == [True, True, True, False]  # 0.92 @ 6000 loses to 0.93 @ 5000
    assert pareto(rows, "b1_us") == [True, True, False, False]


def test_choice_rules_pick_the_smallest_within_the_drop_or_the_best_within_the_budget():
    candidates = _candidates()
    assert choose(candidates, Choice(max_accuracy_drop=2.5)).row.bytes == 5000
    assert choose(candidates, Choice(max_accuracy_drop=10)).row.bytes == 3000
    assert choose(candidates, Choice(max_bytes=6000)).row.val_accuracy == 0.93
    assert choose(candidates, Choice(max_bytes=10**6)).row.val_accuracy == 0.94
    with pytest.raises(ConfigError, match="no candidate fits max-bytes=100"):
        choose(candidates, Choice(max_bytes=100))
    with pytest.raises(ConfigError, match="within max-accuracy-drop=0.5"):
        choose(candidates, Choice(max_accuracy_drop=0.5))


def test_grid_covers_every_combination_with_the_settings_each_stands_for():
    grid = SweepGrid(
        students=("tiny", "small"), prune_ratios=(0.0, 0.5), quant=("fp32", "qoperator")
    )
    configs = grid.configs(RunConfig(kd_epochs=7))
    assert len(configs) == 8 and all(c.kd_epochs == 7 for c in configs)
    assert {(c.student, c.prune_ratio, c.quant_mode, c.quant_format) for c in configs} == {
        (s, p, m, f)
        for s in ("tiny", "small")
        for p in (0.0, 0.5)
        for m, f in (("none", "qdq"), ("static", "qoperator"))
    }
    with pytest.raises(ConfigError, match="unknown sweep student 'huge'"):
        SweepGrid(students=("huge",))


def test_sweep_table_has_each_candidates_macs_and_arena_and_its_front():
    candidates = _candidates()
    for candidate, arena in zip(candidates, (800, 500, 900, 400), strict=True):
        resources = Resources(params=1, macs=arena * 10, flash_bytes=1, arena_bytes=arena)
        candidate.row = dataclasses.replace(candidate.row, resources=resources)
    table = sweep_table(candidates, candidates[1], Choice(max_accuracy_drop=2.5), 0.95)
    rows = table["rows"]
    assert [(r["macs"], r["arena_bytes"]) for r in rows] == [(8000, 800), (5000, 500),
                                                             (9000, 900), (4000, 400)]  # fmt: skip
    assert [r["pareto_arena"] for r in rows] == [True, True, False, True]
    assert set(COLUMNS) <= set(rows[0]) and "resources" not in rows[0]
    candidates[2].row = dataclasses.replace(candidates[2].row, resources=None)  # not measured
    rows = sweep_table(candidates, None, Choice(max_accuracy_drop=2.5), 0.95)["rows"]
    assert rows[2]["arena_bytes"] is None and {r["pareto_arena"] for r in rows} == {None}
