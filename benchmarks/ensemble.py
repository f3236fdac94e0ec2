"""Ensemble distillation vs the global-model teacher under strong skew (Dirichlet alpha 0.1).

    python benchmarks/ensemble.py --json OUT.json [--seeds 3] [--alpha 0.1] [--set KEY=JSON ...]

For each seed, one real `fedge simulate` run (Flower simulation, digits, 10 clients, Dirichlet
`--alpha`) with `teacher-mode ensemble`: its shipped student is distilled from the mean logits the
last round's clients return for the public transfer set. Then `fedge compress` on the same run
with `teacher-mode global` distils the same student recipe from the run's global model. Both
students come from one training run, so the teacher (and every client model) is identical and
only the distillation teacher differs. A control distils the global model's logits on the
ensemble's own fixed transfer set, in this process, to separate the cost of the ensemble's
logits from the cost of a fixed transfer set. Accuracy is on the central test split.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from fedge.compression.ensemble import LogitTable
from fedge.compression.onnx_teacher import OnnxTeacher
from fedge.core.config import RunConfig
from fedge.core.ort import make_session, session_accuracy
from fedge.core.partition import PublicPool, build_federation
from fedge.core.training import predict_logits
from fedge.pipeline.chain.stages import CompressionConfig, Inputs, compress
from fedge.pipeline.chain.teacher_source import ENSEMBLE_FILE
from fedge.pipeline.rundir.paths import RESULTS_FILE, TEACHER_FILE
from fedge.simulations.crash import run_simulate


def main() -> None:
    """Run the comparison and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True, help="where to write the results")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--set", action="append", default=[], help="extra KEY=JSON run setting")
    args = parser.parse_args()
    extra = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    rows = []
    with tempfile.TemporaryDirectory(prefix="fedge-ensemble-") as tmp:
        for seed in range(args.seeds):
            rows.append(one_seed(Path(tmp), seed, args.alpha, extra))
            print(json.dumps(rows[-1]), flush=True)
    summary = {
        "config": {"alpha": args.alpha, "seeds": args.seeds, "extra": extra},
        "mean": {
            key: sum(r[key] for r in rows) / len(rows)
            for key in (
                "teacher",
                "global_student",
                "ensemble_student",
                "ensemble_gain_pt",
                "global_fixed_views_student",
            )
        },
        "per_seed": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=2) + "\n")
    mean = summary["mean"]
    print(f"{'':24}{'accuracy':>10}")
    print(f"{'teacher (global model)':24}{100 * mean['teacher']:>9.2f}%")
    print(f"{'student, global teacher':24}{100 * mean['global_student']:>9.2f}%")
    print(f"{'student, ensemble':24}{100 * mean['ensemble_student']:>9.2f}%")
    fixed = 100 * mean["global_fixed_views_student"]
    print(f"{'student, global, fixed':24}{fixed:>9.2f}%  (control: the ensemble's transfer set)")
    print(f"ensemble - global: {mean['ensemble_gain_pt']:+.2f} points (mean of {args.seeds} seeds)")


def one_seed(tmp: Path, seed: int, alpha: float, extra: dict[str, Any]) -> dict[str, Any]:
    """One training run, two students: ensemble (the run's) and global (fedge compress)."""
    settings = {
        "dataset": "digits",
        "partition": "dirichlet",
        "alpha": alpha,
        "seed": seed,
        "teacher-mode": "ensemble",
        **extra,
    }
    scenario = tmp / f"seed{seed}.toml"
    scenario.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items()))
    run = tmp / f"run{seed}"
    run_simulate(["--scenario", str(scenario), "--out", str(run)], tmp / "log.txt")
    out = run / "compress" / "global"
    subprocess.run(
        [sys.executable, "-m", "fedge", "compress", str(run), "--teacher-mode", "global"]
        + ["--out", str(out)],
        check=True,
        capture_output=True,
    )
    ensemble = json.loads((run / RESULTS_FILE).read_text())
    single = json.loads((out / RESULTS_FILE).read_text())
    fixed = fixed_views_control(run, ensemble["config"])
    return {
        "seed": seed,
        "teacher": ensemble["teacher"]["accuracy"],
        "global_student": single["student"]["accuracy"],
        "ensemble_student": ensemble["student"]["accuracy"],
        "ensemble_gain_pt": 100 * (ensemble["student"]["accuracy"] - single["student"]["accuracy"]),
        "global_fixed_views_student": fixed,
        "ensemble": ensemble["ensemble"],
        "bytes": {
            "global": single["student"]["onnx_bytes"],
            "ensemble": ensemble["student"]["onnx_bytes"],
        },
    }


def fixed_views_control(run: Path, config: dict[str, Any]) -> float:
    """Control: the global model's logits on the ensemble's own transfer set, same recipe.

    Separates what the ensemble's logits cost from what distilling on a fixed transfer set
    (no augmentation on the fly) costs. Returns the shipped student's test accuracy.
    """
    cfg = RunConfig.from_run_config(config)
    fed = build_federation(cfg)
    prep = fed.dataset.preprocessing
    teacher = OnnxTeacher((run / TEACHER_FILE).read_bytes())
    with np.load(run / ENSEMBLE_FILE, allow_pickle=False) as data:
        x = data["x"]
    table = LogitTable(x, predict_logits(teacher, x))
    compression = CompressionConfig.from_run(cfg).on_fixed_views(cfg.ensemble_views)
    inputs = Inputs(
        table, PublicPool(x), fed.server.val, fed.server.test, prep, fed.dataset.num_classes
    )
    outcome = compress(compression, inputs)
    session = make_session(outcome.student_bytes)
    return session_accuracy(session, prep.invert(fed.server.test.x), fed.server.test.y)


if __name__ == "__main__":
    main()
