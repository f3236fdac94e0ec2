"""report.md and the figures, from hand-built results (what each line says, not only that it renders)."""

import numpy as np

from fedge.pipeline.outputs.plots import accuracy_plot, pareto_plot, roc_plot
from fedge.pipeline.outputs.report import render_compression_report, render_report

PNG = b"\x89PNG\r\n\x1a\n"


def results(**changes):
    latency = {"b1_p50": 10.0, "b64_p50": 100.0, "b1_p95": 12.0}
    base = {
        "run_id": "r1",
        "config": {
            "dataset": "digits", "clients": 2, "partition": "dirichlet", "alpha": 0.5,
            "strategy": "fedavg", "rounds": 2, "seed": 0, "sparsity": 0.0,
        },
        "ensemble": {"mode": "global"},
        "teacher": {"accuracy": 0.95, "params": 1000, "onnx_bytes": 4000, "latency_us": latency},
        "stages": [
            {"name": "distilled", "accuracy": 0.94, "params": 100, "bytes": 400, "gzip_bytes": None},
            {"name": "int8", "accuracy": 0.93, "params": 100, "bytes": 150, "gzip_bytes": 120},
        ],
        "student": {
            "accuracy": 0.93, "params": 100, "onnx_bytes": 200, "gzip_bytes": 160,
            "sha256": "ab" * 32, "quantized": True, "quantization_reason": "int8 accepted: x",
            "size_ratio": 20.0, "version": 1, "latency_us": latency,
        },
        "privacy": {"mode": "none"},
        "rounds": [
            {"round": 1, "accuracy": 0.5, "loss": 1.0, "clients_ok": 2, "clients_failed": [],
             "clients_rejected": [], "skipped": None},
            {"round": 2, "accuracy": 0.95, "loss": 0.2, "clients_ok": 1,
             "clients_failed": [{"node_id": 5}], "clients_rejected": [], "skipped": None},
        ],
        "faults": {"aggregation": "fedavg", "norm_outlier_factor": 10.0, "min_clients": 1,
                   "byzantine_partitions": [], "dropout_fraction": 0.0, "straggler_fraction": 0.0},
        "rejected": [],
        "resumed_from": [],
        "final_model_sha256": "cd" * 32,
        "clients": [
            {"partition_id": 0, "installed": True, "reason": "installed", "accuracy": 2 / 3,
             "latency_us_p50": 20.0, "test_examples": 3, "teacher_accuracy": 1.0},
            {"partition_id": 1, "installed": False, "reason": "signature check failed",
             "accuracy": None, "latency_us_p50": None, "teacher_accuracy": 0.9},
        ],
        "communication": {"train_bytes": 2_000_000, "deploy_bytes": 5000},
        "timing_s": {"total": 10.0, "training": 6.0, "compression": 3.0, "deploy": 1.0},
    }  # fmt: skip
    base.update(changes)
    return base


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


def test_run_report_states_the_dp_guarantee():
    privacy = {
        "mode": "central", "clipping_norm": 1.0, "clipping": "server", "noise_multiplier": 1.2,
        "epsilon": 2.5, "delta": 1e-5, "unit": "client", "accountant": "rdp", "target_epsilon": 3.0,
    }  # fmt: skip
    text = render_report(results(privacy=privacy))
    assert "**epsilon = 2.500 at delta = 1e-05** per client" in text and "target 3.0" in text


def test_compression_report_lists_candidates_and_bolds_the_shipped_one():
    row = {
        "student": "tiny", "prune_ratio": 0.0, "quant": "qdq", "quantized": False,
        "val_accuracy": 0.9, "drop_pt": 1.5, "bytes": 999, "b1_us": 5.0, "b64_us": 50.0,
    }  # fmt: skip
    chosen = {**row, "student": "small", "quantized": True, "bytes": 1500}
    choice = {
        "candidates": [row, chosen], "chosen": chosen, "sweep": False,
        "max_accuracy_drop_pt": 2.0, "max_bytes": None, "teacher_val_accuracy": 0.915,
    }  # fmt: skip
    text = render_compression_report(
        {**results(), "source_run": "/runs/r1", "choice": choice, "privacy": None}
    )
    assert "| tiny | 0.00 | qdq (refused) | 90.00 % | 1.50 | 999 |" in text
    assert "| **small** | **0.00** | **qdq** |" in text
    assert "at most 2.0 validation points below the teacher (91.50 %)" in text


def test_figures_are_pngs_and_identical_roc_curves_are_both_labelled(monkeypatch):
    assert accuracy_plot(results()).startswith(PNG)
    rows = [
        {"student": s, "prune_ratio": 0.0, "quant": q, "quantized": True, "val_accuracy": a,
         "bytes": b, "b1_us": t, "pareto_bytes": True, "pareto_latency": True, "chosen": c}
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
