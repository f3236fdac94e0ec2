"""Privacy: DP on the student's federated rounds, side by side with the public-only student.

    python benchmarks/privacy.py --json OUT.json [--seeds 3] [--parts students,scale]

`students`: `simulations/digits-dp.toml` (local DP-SGD, epsilon 3 at delta 1e-5, 2 clients)
for each seed, twice in one process each: as the scenario is (the student learns on the
public pool only; the teacher spends the whole budget) and with the student's federated rounds
(`kd-source both`, `student-rounds` x `student-epochs` below) under the same total epsilon:
every step at one noise, composed by the accountant. Writes per run the
teacher's and the shipped student's test accuracy, the total epsilon and the ledger's releases,
and `dp_student_accuracy` / `dp_total_epsilon` (means over seeds of the federated variant)
beside `public_student_accuracy`.

`scale`: central DP with Poisson client sampling over many clients (`--scale-dataset`: mnist1d
generated at `--scale-size` samples, or fmnist's 60,000 training images; `--scale-clients`
clients, `fraction-train` 0.1, `--scale-teacher`) at each epsilon of
`--epsilons` and without DP; teacher and student accuracy, the ledger, and
`dp_scale_teacher_drop_pt` (no DP minus epsilon 3), and a plot of accuracy against epsilon
(the JSON's path with `.png`). Each point is one `fedge simulate` process.

`audit`: the audit against the accountant (benchmarks/privacy_audit.py): three calibrated DP
runs and one whose noise was secretly cut; `audit_empirical_over_accountant_max` and
`audit_flags_miscalibration`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from privacy_audit import audits, plot

from fedge.cli.run import NOT_SHIPPED_EXIT
from fedge.pipeline.rundir.paths import RESULTS_FILE
from fedge.simulations.crash import run_simulate

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = ROOT / "simulations" / "digits-dp.toml"
FINISHED = (0, NOT_SHIPPED_EXIT)  # a student the quality gate refused is a result, not a crash
FEDERATED = {"kd-source": "both", "student-rounds": 5, "student-epochs": 1}


def simulate(work: Path, name: str, args: list[str]) -> dict[str, Any]:
    """One `fedge simulate` run; its figures (accuracy in %, epsilon, releases, seconds)."""
    out = work / name
    start = time.monotonic()
    code = run_simulate([*args, "--out", str(out)], work / f"{name}.log", finished=FINISHED)
    results: dict[str, Any] = json.loads((out / RESULTS_FILE).read_text())
    student = results.get("student") or {}
    rounds = results.get("student_rounds") or {}
    return {
        "teacher_accuracy": 100 * results["teacher"]["accuracy"],
        "student_accuracy": 100 * student["accuracy"] if student else None,
        "shipped": code == 0,
        "epsilon": results["privacy"]["epsilon"],
        "releases": results["privacy"].get("releases"),
        "student_rounds_kept": rounds.get("kept"),
        "seconds": time.monotonic() - start,
    }


def _flags(settings: dict[str, Any]) -> list[str]:
    return [part for key, value in settings.items() for part in (f"--{key}", str(value))]


def _spread(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "min": min(values),
        "max": max(values),
        "std": statistics.pstdev(values),
    }


def students(work: Path, seeds: int) -> dict[str, Any]:
    """digits-dp with and without the student's federated rounds, per seed."""
    rows: dict[str, list[dict[str, Any]]] = {"public": [], "federated": []}
    for seed in range(seeds):
        base = ["--scenario", str(SCENARIO), "--seed", str(seed)]
        rows["public"].append(simulate(work, f"public-{seed}", base))
        rows["federated"].append(simulate(work, f"federated-{seed}", base + _flags(FEDERATED)))
        print(
            seed, rows["public"][-1]["student_accuracy"], rows["federated"][-1]["student_accuracy"]
        )
    summary: dict[str, Any] = {}
    for name, runs in rows.items():
        shipped = [r["student_accuracy"] for r in runs if r["student_accuracy"] is not None]
        summary[name] = {
            "student_accuracy": _spread(shipped) if shipped else None,
            "teacher_accuracy": _spread([r["teacher_accuracy"] for r in runs]),
            "shipped": f"{len(shipped)}/{len(runs)}",
            "epsilon_max": max(r["epsilon"] for r in runs),
        }
    fed = summary["federated"]
    return {
        "scenario": str(SCENARIO.relative_to(ROOT)),
        "federated_settings": FEDERATED,
        "runs": rows,
        "summary": summary,
        "dp_student_accuracy": fed["student_accuracy"]["mean"] if fed["student_accuracy"] else None,
        "dp_total_epsilon": fed["epsilon_max"],
        "public_student_accuracy": (summary["public"]["student_accuracy"] or {}).get("mean"),
    }


def scale(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Central DP with Poisson sampling over many clients, per epsilon and without DP."""
    data = {"dataset": args.scale_dataset}
    if args.scale_dataset == "mnist1d":
        data["dataset-size"] = args.scale_size
    base = {
        **data,
        "clients": args.scale_clients,
        "fraction-train": 0.1,
        "rounds": args.scale_rounds,
        "teacher": args.scale_teacher,
        "student-max-drop": 100,  # the teacher is what this measures; ship whatever comes
    }
    points: dict[str, dict[str, Any]] = {}
    for eps in ["none", *args.epsilons.split(",")]:
        dp = {} if eps == "none" else {"dp": "central", "dp-epsilon": float(eps)}
        points[eps] = simulate(work, f"scale-{eps}", _flags({**base, **dp}))
        print("scale", eps, points[eps]["teacher_accuracy"], points[eps]["epsilon"])
    drop = (
        points["none"]["teacher_accuracy"] - points["3"]["teacher_accuracy"]
        if "3" in points
        else None
    )
    return {"settings": base, "points": points, "dp_scale_teacher_drop_pt": drop}


def main() -> None:
    """Run the parts asked for and write their JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--parts", default="students")
    parser.add_argument("--epsilons", default="1,3,8")
    parser.add_argument("--scale-dataset", default="mnist1d", choices=("mnist1d", "fmnist"))
    parser.add_argument("--scale-size", type=int, default=100_000, help="mnist1d only")
    parser.add_argument("--scale-clients", type=int, default=1000)
    parser.add_argument("--scale-rounds", type=int, default=40)
    parser.add_argument("--scale-teacher", default="cnn")
    parser.add_argument("--audit-epsilons", default="1,3,8")
    args = parser.parse_args()
    out: dict[str, Any] = {"arguments": {k: v for k, v in vars(args).items() if k != "json"}}
    parts = args.parts.split(",")
    if unknown := sorted(set(parts) - {"students", "scale", "audit"}):
        parser.error(f"--parts: unknown {', '.join(unknown)}; allowed: students, scale, audit")
    with tempfile.TemporaryDirectory(prefix="fedge-privacy-") as tmp:
        for part in parts:
            if part == "students":
                out[part] = students(Path(tmp), args.seeds)
            elif part == "scale":
                out[part] = scale(Path(tmp), args)
                plot(out[part], args.json.with_suffix(".png"))
            else:
                eps = [float(e) for e in args.audit_epsilons.split(",")]
                out[part] = audits(Path(tmp), eps)
            args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
