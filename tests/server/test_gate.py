"""The quality gate: a teacher that learned nothing is not compressed, signed or shipped."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from fedge.cli import app
from fedge.client.app import app as client_app
from fedge.core import messages as m
from fedge.pipeline.rundir.paths import staged_run_dir
from fedge.pipeline.ship.gate import NotShippedError, check_teacher
from fedge.server.run import run_server
from tests.flower_local import LocalGrid
from tests.server.test_server import QUICKER

COLLAPSED = QUICKER.replace(rounds=1, local_epochs=1, lr=1e-7)  # stays at its random start


def test_the_gate_compares_with_the_majority_class_plus_the_margin_and_the_floor():
    y = np.array([0] * 6 + [1] * 2 + [2] * 2)  # chance: always "0", 60 %; +0.1 of the 40 left
    assert check_teacher(QUICKER, 0.64, y).passed
    with pytest.raises(NotShippedError, match=r"63.00 % is below the gate's 64.00 %"):
        check_teacher(QUICKER, 0.63, y)
    skewed = np.array([0] * 95 + [1] * 5)  # never above 100 %: 95 % + 0.1 x 5 = 95.5 %
    assert check_teacher(QUICKER, 0.96, skewed).threshold == pytest.approx(0.955)
    with pytest.raises(NotShippedError, match="teacher-floor 90.00 %"):
        check_teacher(QUICKER.replace(teacher_floor=0.9), 0.85, y)
    anyway = check_teacher(QUICKER.replace(ship_anyway=True), 0.1, y)
    assert not anyway.passed and anyway.ship_anyway


@pytest.mark.slow
def test_a_collapsed_teacher_is_not_shipped_and_compress_ships_it_only_when_told(tmp_path):
    grid = LocalGrid(client_app, num_nodes=4)
    with staged_run_dir(tmp_path / "run") as work:
        results = run_server(grid, COLLAPSED, work).to_json()
    run = tmp_path / "run"
    gate = results["quality_gate"]
    assert not gate["passed"] and gate["teacher_val_accuracy"] < gate["threshold"]
    assert results["shipped"] is False and results["student"] is None
    assert not (run / "bundle").exists() and not any(run.glob("nodes/**/*.onnx"))
    assert not [msg for msg in grid.sent if msg.metadata.message_type == m.DEPLOY]
    assert [c["installed"] for c in results["clients"]] == [False] * 4
    assert "quality gate" in results["clients"][0]["reason"]
    assert json.loads((run / "results.json").read_text())["shipped"] is False
    assert "NOT SHIPPED" in (run / "report.md").read_text()

    runner = CliRunner()
    refused = runner.invoke(app, ["compress", str(run)])  # default out: RUN/compress/<time>
    assert refused.exit_code == 3, refused.output
    assert "quality gate" in refused.output and not (run / "compress").exists()
    shipped = runner.invoke(
        app, ["compress", str(run), "--ship-anyway", "--out", str(tmp_path / "c2")]
    )
    assert shipped.exit_code == 0, shipped.output
    again = json.loads((tmp_path / "c2" / "results.json").read_text())
    assert again["quality_gate"]["passed"] is False and again["quality_gate"]["ship_anyway"]
    assert (tmp_path / "c2" / "bundle" / "model.onnx").is_file()
