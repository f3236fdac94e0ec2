"""report.md and the figures, from typed results built by hand (what each line says)."""

import dataclasses
import json

import numpy as np
import pytest

from fedge.compression.resources import Resources
from fedge.core.config import RunConfig
from fedge.pipeline.outputs.plots import accuracy_plot, pareto_plot, roc_plot
from fedge.pipeline.outputs.report import render_compression_report, render_report
from fedge.pipeline.outputs.results import (
    CompressResults,
    RunResults,
    faults_summary,
    sampling_summary,
)
from fedge.pipeline.outputs.rows import (
    CandidateRow,
    ChoiceRecord,
    ClientRow,
    CompressionRecord,
    EnsembleSummary,
    GateVerdict,
    Latency,
    StageRow,
    StudentFigures,
    TeacherFigures,
)

PNG = b"\x89PNG\r\n\x1a\n"


LATENCY = Latency(b1_p50=10.0, b64_p50=100.0, b1_p95=12.0)
GATE = GateVerdict(True, 0.95, 0.1, 0.19, 0.1, 0.0, False, "passed")
STUDENT = StudentFigures(
    accuracy=0.93, params=100, onnx_bytes=200, gzip_bytes=160, sha256="ab" * 32, quantized=True,
    quantization_reason="int8 accepted: x", size_ratio=20.0, version=1, latency_us=LATENCY,
    architecture="deep-tiny",
)  # fmt: skip
RECORD = CompressionRecord(
    shipped=True,
    quality_gate=GATE,
    compression_config={},
    ensemble=EnsembleSummary("global"),
    stages=(StageRow("distilled", 0.94, 100, 400), StageRow("int8", 0.93, 100, 150, 120)),
    choice=None,
    student_rounds=None,
    teacher=TeacherFigures(accuracy=0.95, onnx_bytes=4000, latency_us=LATENCY, params=1000),
    student=STUDENT,
)
CONFIG = RunConfig(clients=2).to_run_config()


def results(**changes) -> RunResults:
    round_row = {"clients_rejected": [], "skipped": None, "clients_failed": []}
    base = RunResults(
        run_id="r1",
        config=CONFIG,
        compression=RECORD,
        rounds=[
            {**round_row, "round": 1, "accuracy": 0.5, "loss": 1.0, "clients_ok": 2},
            {**round_row, "round": 2, "accuracy": 0.95, "loss": 0.2, "clients_ok": 1,
             "clients_failed": [{"node_id": 5}]},
        ],
        rejected=[],
        faults=faults_summary(RunConfig(clients=2)),
        sampling=sampling_summary(RunConfig(clients=2)),
        privacy={"mode": "none"},
        resumed_from=[],
        final_model_sha256="cd" * 32,
        clients=(
            ClientRow(0, True, "installed", accuracy=2 / 3, latency_us_p50=20.0,
                      test_examples=3, teacher_accuracy=1.0),
            ClientRow(1, False, "signature check failed", teacher_accuracy=0.9),
        ),
        communication={"train_bytes": 2_000_000, "deploy_bytes": 5000},
        timing_s={"total": 10.0, "training": 6.0, "compression": 3.0, "deploy": 1.0},
    )  # fmt: skip
    return dataclasses.replace(base, **changes)


def test_run_report_states_each_client_with_its_sample_count_and_the_stages():
    text = render_report(results())
    assert "| 0 | 3 | yes | 100.00 % | 66.67 % | 20.0 µs | installed |" in text
    assert "| 1 |  | no | 90.00 % |  |  | signature check failed |" in text
    assert "| int8 | 93.00 % | 100 | 150 | 26.7x |" in text
    assert "| **deployed student** | 93.00 % | 100 | 200 | 20.0x |" in text
    assert "accuracy change -2.00 points" in text
    assert "| 2 | 95.00 % | 0.2000 | 1 | 1 | 0 |  |" in text
    assert "Quantization: int8 accepted: x." in text
    assert "No differential privacy" in text
    assert "training 2.00 MB, redistribution 5.0 kB" in text


def test_results_json_round_trips_and_a_bad_field_is_named():
    data = json.loads(json.dumps(results().to_json()))
    assert data["student"]["sha256"] == "ab" * 32 and "compression" not in data
    assert RunResults.from_json(data) == results()
    data["clients"][0]["installed"] = "yes"
    with pytest.raises(ValueError, match=r"clients\[0\]\.installed is 'yes', not bool"):
        RunResults.from_json(data)


def test_run_report_states_the_dp_guarantee():
    privacy = {
        "mode": "central", "clipping_norm": 1.0, "clipping": "server", "noise_multiplier": 1.2,
        "epsilon": 2.5, "delta": 1e-5, "unit": "client", "accountant": "rdp", "target_epsilon": 3.0,
    }  # fmt: skip
    text = render_report(results(privacy=privacy))
    assert "**epsilon = 2.500 at delta = 1e-05** per client" in text and "target 3.0" in text


def test_compression_report_lists_candidates_and_bolds_the_shipped_one():
    row = CandidateRow(
        student="tiny", prune_ratio=0.0, quant="qdq", quantized=False, params=10, bytes=999,
        gzip_bytes=900, val_accuracy=0.9, drop_pt=1.5, test_accuracy=0.9, b1_us=5.0, b64_us=50.0,
        teacher_b1_us=None, teacher_b64_us=None,
    )  # fmt: skip
    chosen = dataclasses.replace(row, student="small", quantized=True, bytes=1500)
    choice = ChoiceRecord(2.0, None, 0.915, False, (row, chosen), chosen)
    compressed = CompressResults(
        run_id="r1",
        source_run="/runs/r1",
        config=CONFIG,
        compression=dataclasses.replace(RECORD, choice=choice),
        privacy=None,
        timing_s={"compression": 1.0},
    )
    text = render_compression_report(compressed)
    assert "| tiny | 0.00 | qdq (refused) | 90.00 % | 1.50 | 999 |" in text
    assert "| **small** | **0.00** | **qdq** |" in text
    assert "at most 2.0 validation points below the teacher (91.50 %)" in text


def test_reports_show_the_resources_of_each_candidate_stage_and_the_shipped_student():
    small = Resources(params=1578, macs=16448, flash_bytes=999, arena_bytes=640, traffic_bytes=8000)
    row = CandidateRow(
        student="tiny", prune_ratio=0.0, quant="qdq", quantized=True, params=10, bytes=999,
        gzip_bytes=900, val_accuracy=0.9, drop_pt=1.5, test_accuracy=0.9, b1_us=5.0, b64_us=50.0,
        teacher_b1_us=None, teacher_b64_us=None, resources=small,
    )  # fmt: skip
    unmeasured = dataclasses.replace(row, student="small", resources=None)
    int8 = StageRow("int8", 0.93, 100, 150, 120, resources=dataclasses.replace(small, macs=9000))
    record = dataclasses.replace(
        RECORD,
        stages=(StageRow("distilled", 0.94, 100, 400), int8),
        choice=ChoiceRecord(2.0, None, 0.915, False, (row, unmeasured), row),
    )
    text = render_report(results(compression=record))
    assert "| validation | drop (pt) | flash bytes | MACs | arena | batch-1 |" in text
    energy = (16448 * 0.23 + 8000 * 1.25) / 1e6  # int8 MACs and the bytes moved, in µJ
    assert "| **tiny** | **0.00** | **qdq** | **90.00 %** | **1.50** | **999** | **16,448** | " \
        f"**640** | **5.0 µs** | **{energy:.3f} µJ** |" in text  # fmt: skip
    assert "| small | 0.00 | qdq | 90.00 % | 1.50 | 999 |  |  | 5.0 µs |  |" in text
    assert f"| deployed student | 10.0 µs | 100.0 µs | {energy:.3f} µJ |" in text  # its row
    assert text.count("is an estimate") == 2 and "Horowitz ISSCC 2014" in text
    assert "| int8 | 93.00 % | 100 | 150 | 26.7x | 9,000 | 640 |" in text
    assert "| distilled | 94.00 % | 100 | 400 | 10.0x |  |  |" in text
    assert "| **deployed student** | 93.00 % | 100 | 200 | 20.0x | 16,448 | 640 |" in text


def test_results_without_resources_still_load():
    measured = dataclasses.replace(RECORD.stages[1], resources=Resources(1, 2, 3, 4, 5))
    record = dataclasses.replace(RECORD, stages=(RECORD.stages[0], measured))
    data = json.loads(json.dumps(results(compression=record).to_json()))
    assert data["stages"][1]["resources"] == {
        "params": 1, "macs": 2, "flash_bytes": 3, "arena_bytes": 4, "traffic_bytes": 5
    }  # fmt: skip
    del data["stages"][1]["resources"]["traffic_bytes"]  # written before traffic was measured
    assert RunResults.from_json(data).compression.stages[1].resources == Resources(1, 2, 3, 4, 0)
    for stage in data["stages"]:
        del stage["resources"]  # as results.json was written before resources were measured
    assert RunResults.from_json(data) == results()


def test_figures_are_pngs_and_identical_roc_curves_are_both_labelled(monkeypatch):
    assert accuracy_plot(results()).startswith(PNG)
    rows = [
        {"student": s, "prune_ratio": 0.0, "quant": q, "quantized": True, "val_accuracy": a,
         "bytes": b, "b1_us": t, "arena_bytes": b // 4, "pareto_bytes": True,
         "pareto_latency": True, "pareto_arena": True, "chosen": c}
        for s, q, a, b, t, c in [("tiny", "qdq", 0.9, 900, 9.0, False),
                                 ("small", "dynamic", 0.95, 2000, 20.0, True)]
    ]  # fmt: skip
    table = {"rows": rows, "max_accuracy_drop_pt": 1.0, "max_bytes": None,
             "teacher_val_accuracy": 0.96}  # fmt: skip
    assert pareto_plot(table).startswith(PNG)
    curve = (np.array([0.0, 0.5, 1.0]), np.array([0.0, 0.6, 1.0]))
    models = {"distilled": {"auc": 0.55}, "pruned": {"auc": 0.55}}
    import matplotlib.pyplot as plt

    labels = []
    original = plt.Axes.legend

    def spy(self, *args, **kwargs):
        labels.extend(h.get_label() for h in self.get_lines())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(plt.Axes, "legend", spy)
    assert roc_plot({"distilled": curve, "pruned": curve}, models).startswith(PNG)
    assert "pruned (AUC 0.550, same as distilled)" in labels


def test_the_report_and_results_carry_the_bundles_artifacts_or_why_they_are_absent():
    from fedge.pipeline.outputs.rows import OrtFigures, TfliteFigures

    assert RECORD.student is not None
    tflite = TfliteFigures(23256, "a" * 64, 15680, 20496, 0.8815, 0.9956)
    ort = OrtFigures(69192, "b" * 64, True, 0.8827, 1.0)
    student = dataclasses.replace(RECORD.student, tflite=tflite, ort=ort)
    made = results(compression=dataclasses.replace(RECORD, student=student))
    text = render_report(made)
    assert "model.ort (ORT Mobile, batch 1): 69,192 bytes, NNAPI as is: YES" in text
    assert (
        "model.tflite (full-integer int8, LiteRT and TensorFlow Lite Micro): 23,256 bytes" in text
    )
    assert "TFLM's total: 20,496 bytes" in text and "99.56 % of the test split" in text
    assert RunResults.from_json(json.loads(json.dumps(made.to_json()))) == made
    refused = dataclasses.replace(RECORD.student, tflite_reason="TFLiteConverter failed: x")
    text = render_report(results(compression=dataclasses.replace(RECORD, student=refused)))
    assert "model.tflite was asked for but not made: TFLiteConverter failed: x" in text
    assert "model.ort" not in text  # not asked for: nothing said
