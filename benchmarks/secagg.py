"""Secure aggregation: the aggregate against plain FedAvg, and what SecAgg+ costs a round.

    python benchmarks/secagg.py --json OUT.json [--rounds 4] [--repeats 2]

`matches`: in one process (the real ClientApp, an in-process grid), 10 clients on digits with
the linear teacher, 2 of them dropping out after key sharing; the secure aggregate against
FedAvg over the same 8 survivors, with the bound the quantization allows
(survivors x 2 secagg-clip / secagg-quantization over the survivors' weight share), as
`secagg_matches_plain` and `secagg_max_abs_error`.

`timing`: `fedge simulate` (Flower's simulation engine, Ray) without and with
`--secure-aggregation secagg+` (and with `--update-compression int8` under it), interleaved
`--repeats` times, on 10 and 100 IID digits clients
and on 10 fmnist clients; a round's time is the median of its `rounds[].seconds` without the
first round (Ray's actors start in it). `secagg_round_time_ratio_10` / `_100` are digits';
fmnist's, where local training is a real cost, is `secagg_round_time_ratio_fmnist_10`.
Run it on a quiet machine: nothing else may share the two cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fedge.pipeline.rundir.paths import RESULTS_FILE  # noqa: E402
from fedge.simulations.crash import run_simulate  # noqa: E402

# The rounds are what this measures: the compression after them is kept short.
LIGHT_COMPRESSION = {
    "kd-source": "public",
    "student": "deep-tiny",
    "kd-epochs": 1,
    "quant-mode": "none",
    "student-max-drop": 100,
}
SETUPS = {
    "10": {"clients": 10, "partition": "iid"},
    "100": {"clients": 100, "partition": "iid", "val-fraction": 0.05, "public-fraction": 0.1},
    "fmnist_10": {"dataset": "fmnist", "clients": 10, "partition": "iid"},
}


def matches() -> dict[str, Any]:
    """The differential run: secure aggregate vs FedAvg over the same survivors."""
    from fedge.core import secagg_grid as sg
    from fedge.core.partition import build_federation, client_data
    from fedge.server.secagg import max_weight
    from tests.server.test_secagg import CFG, _train

    secure, log, _ = _train(CFG.replace(secure_aggregation="secagg+"))
    plain, plain_log, _ = _train(CFG)
    dropped = {f["node_id"] - 100 for f in log.rounds[0]["clients_failed"]}
    fed = build_federation(CFG)
    weight = sum(len(client_data(fed, p, CFG).train) for p in range(10) if p not in dropped)
    survivors = log.rounds[0]["clients_ok"]
    quantum = 2 * sg.clip(CFG) / sg.levels(CFG)
    bound = survivors * quantum / (weight / max_weight(CFG))
    error = max(float(np.abs(secure[k] - plain[k]).max()) for k in plain)
    return {
        "clients": 10,
        "dropped_after_key_sharing": sorted(dropped),
        "survivors": survivors,
        "plain_survivors": plain_log.rounds[0]["clients_ok"],
        "secagg": log.rounds[0]["secagg"],
        "secagg_max_abs_error": error,
        "quantization_bound": bound,
        "secagg_matches_plain": error <= bound and survivors == 8,
    }


def _round_seconds(work: Path, name: str, settings: dict[str, Any]) -> dict[str, Any]:
    out = work / name
    flags = [part for k, v in settings.items() for part in (f"--{k}", str(v))]
    run_simulate([*flags, "--out", str(out)], work / f"{name}.log", finished=(0, 3))
    results = json.loads((out / RESULTS_FILE).read_text())
    seconds = [r["seconds"] for r in results["rounds"]][1:]
    return {
        "round_seconds_median": statistics.median(seconds),
        "round_seconds": seconds,
        "train_bytes": results["communication"]["train_bytes"],
        "teacher_accuracy": 100 * results["teacher"]["accuracy"],
    }


MODES = {
    "plain": {},
    "secagg": {"secure-aggregation": "secagg+"},
    "secagg_int8": {"secure-aggregation": "secagg+", "update-compression": "int8"},
}


def timing(work: Path, rounds: int, repeats: int, setups: list[str]) -> dict[str, Any]:
    """Plain and secure runs of each setup, interleaved; the ratio of median round times."""
    rows: dict[str, Any] = {}
    for name in setups:
        runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
        for repeat in range(repeats):
            for mode, extra in MODES.items():
                settings = {**SETUPS[name], "rounds": rounds, **LIGHT_COMPRESSION, **extra}
                runs[mode].append(_round_seconds(work, f"{name}-{mode}-{repeat}", settings))
                print(name, mode, repeat, runs[mode][-1]["round_seconds_median"], flush=True)
        median = {
            mode: statistics.median(r["round_seconds_median"] for r in rows_)
            for mode, rows_ in runs.items()
        }
        rows[name] = {
            "runs": runs,
            "plain_s": median["plain"],
            "secagg_s": median["secagg"],
            "secagg_int8_s": median["secagg_int8"],
            "ratio": median["secagg"] / median["plain"],
            "ratio_int8": median["secagg_int8"] / median["plain"],
        }
    return rows


def main() -> None:
    """Both parts; the JSON after each."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--parts", default="matches,timing")
    parser.add_argument("--setups", default=",".join(SETUPS), help="of: " + ", ".join(SETUPS))
    args = parser.parse_args()
    setups = args.setups.split(",")
    if unknown := sorted(set(setups) - set(SETUPS)):
        parser.error(f"--setups: unknown {', '.join(unknown)}; allowed: {', '.join(SETUPS)}")
    out: dict[str, Any] = {"arguments": {"rounds": args.rounds, "repeats": args.repeats}}
    if "matches" in args.parts:
        out["matches"] = matches()
        out["secagg_matches_plain"] = out["matches"]["secagg_matches_plain"]
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    if "timing" in args.parts:
        with tempfile.TemporaryDirectory(prefix="fedge-secagg-") as tmp:
            rows = timing(Path(tmp), args.rounds, args.repeats, setups)
        out["timing"] = rows
        for name, row in rows.items():
            out[f"secagg_round_time_ratio_{name}"] = row["ratio"]
            out[f"secagg_int8_round_time_ratio_{name}"] = row["ratio_int8"]
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
