"""The federated teacher's accuracy over seeds for one federation (default: MNIST-1D, IID, 10 x 20).

    python benchmarks/teacher.py --json OUT.json [--dataset mnist1d] [--partition iid]
        [--clients 10] [--rounds 20] [--seeds 3] [--set KEY=VALUE ...]

Per seed, the real `fedge simulate`; the JSON holds each seed's teacher and student test
accuracy and the shipped student, and their mean with the lowest and highest seed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from measure import run_measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--dataset", default="mnist1d")
    parser.add_argument("--partition", default="iid")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    extra = [p for item in args.set for p in (f"--{item.split('=', 1)[0]}", item.split("=", 1)[1])]
    work = Path(tempfile.mkdtemp(prefix="fedge-teacher-"))
    rows: list[dict[str, Any]] = []
    for seed in range(args.seeds):
        out = work / f"seed-{seed}"
        cmd = [sys.executable, "-m", "fedge", "simulate", "--dataset", args.dataset,
               "--partition", args.partition, "--clients", str(args.clients),
               "--rounds", str(args.rounds), "--seed", str(seed), *extra, "--out", str(out)]  # fmt: skip
        measured = run_measured(cmd, work / "fedge.log")
        results = json.loads((out / "results.json").read_text())
        rows.append(
            {
                "seed": seed,
                "teacher_accuracy": results["teacher"]["accuracy"],
                "teacher_params": results["teacher"]["params"],
                "student_accuracy": results["student"]["accuracy"],
                "student": results["student"]["architecture"],
                "wall_s": measured["wall_s"],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    summary = {
        key: {
            "mean": sum(r[key] for r in rows) / len(rows),
            "min": min(r[key] for r in rows),
            "max": max(r[key] for r in rows),
        }
        for key in ("teacher_accuracy", "student_accuracy")
    }
    config = {k: v for k, v in vars(args).items() if k != "json"}
    result = {"config": config, "summary": summary, "seeds": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
