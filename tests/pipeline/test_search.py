"""`fedge compress --search`: trials, budgets, the manifest's architecture, bad input."""

import json

import pytest
from typer.testing import CliRunner

from fedge.cli import app
from fedge.compression.bundle import generate_keypair
from fedge.compression.export import ExportConfig, export_onnx
from fedge.core.models import count_params
from tests.server.test_server import QUICKER


@pytest.fixture(scope="module")
def run(tmp_path_factory, teacher):
    """A finished run as `fedge compress` reads it, its teacher trained centrally (no federation)."""
    path = tmp_path_factory.mktemp("search") / "run"
    generate_keypair(path / "keys")
    (path / "teacher.onnx").write_bytes(export_onnx(teacher, (1, 8, 8), ExportConfig()))
    results = {
        "config": QUICKER.to_run_config(),
        "teacher": {"params": count_params(teacher)},
        "student": {"architecture": QUICKER.student},
        "privacy": None,
    }
    (path / "results.json").write_text(json.dumps(results))
    return path


def _pair(row):  # a trial's as its finalist (int8 refused in the trial: fp32)
    quant = row["quant"] if row.get("quantized", True) else "fp32"
    return row["student"], quant


def _compress(run, *args):
    return CliRunner().invoke(app, ["compress", str(run), *args])


def test_a_search_ships_the_most_accurate_trial_within_max_bytes(run, tmp_path):
    out = tmp_path / "o"
    limits = ("--max-bytes", "16000", "--max-ram-bytes", "3000")  # flash and activation memory
    result = _compress(run, "--search", "--trials", "3", *limits, "--out", str(out))
    assert result.exit_code == 0, result.output
    table = json.loads((out / "search" / "trials.json").read_text())
    rows = table["rows"]
    assert len(rows) == 3 and (out / "search" / "pareto.png").stat().st_size > 10_000
    assert all(r["energy_uj"] > 0 for r in rows) and "Horowitz" in table["energy_model"]
    assert (out / "search" / "trials.csv").read_text().count("\n") == 4
    chosen = [r for r in rows if r["chosen"]]
    assert len(chosen) == 1 and chosen[0]["bytes"] <= 16000 and chosen[0]["finalist"]
    assert [r["feasible"] for r in rows] == [
        r["bytes"] <= 16000 and r["arena_bytes"] <= 3000 for r in rows
    ]
    fits = sorted((r for r in rows if r["feasible"]), key=lambda r: -r["val_accuracy"])
    results = json.loads((out / "results.json").read_text())
    search = results["search"]
    first = next(r for r in rows if _pair(r) == _pair(search["finalists"][0]))
    assert first["val_accuracy"] == fits[0]["val_accuracy"]  # the most accurate trial first
    full = search["finalists_distilled"]  # distilled fully: the most accurate of them ships
    assert [_pair(f) for f in full] == [_pair(f) for f in search["finalists"]]
    shipped = next(f for f in full if _pair(f) == (search["chosen"], search["chosen_quant"]))
    assert shipped["val_accuracy"] == max(f["val_accuracy"] for f in full)
    assert search["chosen"] == chosen[0]["student"]
    assert search["shipped"]["bytes"] <= 16000 and search["shipped"]["arena_bytes"] <= 3000
    manifest = json.loads((out / "bundle" / "manifest.json").read_text())
    assert manifest["architecture"] == chosen[0]["student"] == results["search"]["chosen"]
    assert manifest["architecture"].startswith("arch:")


def test_a_budget_nothing_meets_exits_2_naming_it_and_the_fastest(run, tmp_path):
    out = tmp_path / "o"
    result = _compress(
        run, "--search", "--trials", "2", "--max-latency-us", "0.01", "--out", str(out)
    )
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "no architecture of 2 tried meets the budget (max-latency-us 0.01)" in text
    assert "the fastest was arch:" in text and "Nothing shipped" in text
    assert not out.exists()


def test_bad_search_options_exit_2_before_any_work(run, tmp_path):
    from tests.server.test_tiers import slow_device_profile

    bad = tmp_path / "bad.json"
    bad.write_text('{"fedge_profile": 7}')
    energy = slow_device_profile(tmp_path / "energy.json")
    profile = json.loads(energy.read_text())
    profile["device"]["energy"] = {"pj_per_byte": -1}
    energy.write_text(json.dumps(profile))
    for args, message in (
        (["--search", "--device-profile", str(bad)], "has version 7"),
        (["--search", "--device-profile", str(energy)], "device.energy.pj_per_byte must be finite"),
        (["--max-latency-us", "20"], "need --search"),
        (["--search", "--sweep"], "--search chooses the student: not with --sweep"),
        (
            ["--search", "--run-config", "student='ds-small'"],
            "not with student 'ds-small' (from --student, --scenario or --run-config)",
        ),
        (["--search", "--trials", "0"], "--trials must be >= 1"),
        (["--search", "--kd-source", "federated"], "--search distils on the public pool"),
    ):
        result = _compress(run, *args, "--out", str(tmp_path / "o"))
        assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
        assert not (tmp_path / "o").exists()


def test_a_trial_takes_the_quantization_it_is_asked_for(run):
    from fedge.compression.onnx_teacher import OnnxTeacher
    from fedge.core.partition import build_federation
    from fedge.pipeline.chain.teacher_source import global_source
    from fedge.pipeline.ship.recompress import compress_config
    from fedge.pipeline.ship.search import SearchConfig, _evaluate, quant_choices

    cfg, _ = compress_config(run, {"kd-source": "public", "int8-tolerance": 1.0})  # int8 kept
    assert quant_choices(cfg) == ["qdq", "fp32"]
    assert quant_choices(cfg.replace(quant_mode="none")) == ["fp32"]
    fed = build_federation(cfg)
    source = global_source(OnnxTeacher((run / "teacher.onnx").read_bytes()), fed.server.public_pool)
    rows = {
        quant: _evaluate(
            cfg, source, fed, 0.9, SearchConfig(trial_epochs=2), "arch:c8k3-relu", quant
        )
        for quant in ("qdq", "fp32")
    }
    assert rows["fp32"].quant == "fp32" and not rows["fp32"].quantized
    assert rows["qdq"].quantized and rows["qdq"].bytes < rows["fp32"].bytes / 2
    assert rows["qdq"].graph["int8"] and not rows["fp32"].graph["int8"]


def test_a_trial_distils_a_share_of_the_final_sample_steps_capped_or_not():
    """fmnist's pool (17,500) meets kd-sample-budget: a trial gets the same quarter of it."""
    from fedge.core.config import RunConfig
    from fedge.pipeline.ship.search import trial_recipe

    capped = trial_recipe(RunConfig(kd_epochs=100, kd_sample_budget=500_000), 25)
    assert (capped.kd_epochs, capped.kd_sample_budget) == (25, 125_000)
    short = trial_recipe(RunConfig(kd_epochs=10, kd_sample_budget=500_000), 25)
    assert (short.kd_epochs, short.kd_sample_budget) == (10, 500_000)  # never more than final
    uncapped = trial_recipe(RunConfig(kd_epochs=100, kd_sample_budget=0), 25)
    assert (uncapped.kd_epochs, uncapped.kd_sample_budget) == (25, 0)
    assert capped.qat == "off" and capped.kd_source == "public"
