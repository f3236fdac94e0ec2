"""Device runtime overheads: Predictor.predict vs a bare session.run, and `fedge serve` on loopback.

Both sides run the same verified model, interleaved, at batch 1; `fedge serve` is measured as
batch-1 POST /predict round trips over one keep-alive connection.

    python benchmarks/device.py --run-dir RUN_DIR --json OUT.json

RUN_DIR is a finished `fedge simulate` run: its bundle is installed into a temporary model store
and verified with the run's public key.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from fedge.client.runtime.predictor import Predictor, bare_session
from fedge.client.runtime.store import ModelStore
from fedge.client.runtime.verify import load_public_key, read_bundle_dir
from fedge.core.ort import interleaved_latency_us


def _store_from_run(run_dir: Path, work: Path) -> tuple[Path, Path]:
    key = run_dir / "keys" / "signing.pub"
    store = work / "model-store"
    ModelStore(store).install(read_bundle_dir(run_dir / "bundle"), load_public_key(key))
    return store, key


def _serve_latency(
    store: Path, key: Path, sample: list[float], iters: int, warmup: int
) -> dict[str, float]:
    """p50/p95 of POST /predict round trips over one keep-alive connection."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fedge",
            "serve",
            "--model-dir",
            str(store),
            "--trusted-key",
            str(key),
            "--port",
            "0",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        port = int(line.rsplit(":", 1)[1])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        body = json.dumps({"inputs": [sample]}).encode()  # bytes: one send() with the headers
        headers = {"Content-Type": "application/json"}
        times = []
        for i in range(warmup + iters):
            start = time.perf_counter_ns()
            conn.request("POST", "/predict", body, headers)
            response = conn.getresponse()
            response.read()
            if i >= warmup:
                times.append(time.perf_counter_ns() - start)
            assert response.status == 200
        conn.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return {
        "p50_us": float(np.percentile(times, 50)) / 1e3,
        "p95_us": float(np.percentile(times, 95)) / 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run-dir", type=Path, required=True, help="a finished fedge simulate run")
    parser.add_argument("--json", type=Path, required=True, help="where to write the results")
    parser.add_argument("--iters", type=int, default=3000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store, key = _store_from_run(args.run_dir, Path(tmp))
        predictor = Predictor(store, key, warmup=0)
        session = bare_session(store, key)
        raw = (
            np.random.default_rng(0)
            .uniform(0, 16, size=(1, *predictor.sample_shape))
            .astype(np.float32)
        )
        prepped = predictor.model_input(raw)  # the bare run gets exactly what the model sees
        name = session.get_inputs()[0].name
        lat = interleaved_latency_us(
            {
                "bare_session_run": lambda: session.run(None, {name: prepped}),
                "predictor_predict": lambda: predictor.predict(raw),
            },
            warmup=500,
            iters=args.iters,
        )
        serve = _serve_latency(store, key, raw.reshape(-1).tolist(), iters=1000, warmup=200)
    overhead = lat["predictor_predict"]["p50"] / lat["bare_session_run"]["p50"] - 1
    overhead_cpu = lat["predictor_predict"]["cpu_p50"] / lat["bare_session_run"]["cpu_p50"] - 1
    result = {
        "config": {
            "run_dir": str(args.run_dir),
            "iters": args.iters,
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "model_id": predictor.model_id,
            "version": predictor.version,
        },
        "latency_us": lat,
        "predictor_overhead_b1": overhead,
        "predictor_overhead_b1_cpu": overhead_cpu,
        "serve_b1_us": serve,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'':24}{'p50 µs':>10}{'cpu p50 µs':>12}")
    for name, row in lat.items():
        print(f"{name:24}{row['p50']:>10.1f}{row['cpu_p50']:>12.1f}")
    print(
        f"Predictor overhead at batch 1: {100 * overhead:+.1f} % wall, {100 * overhead_cpu:+.1f} % cpu"
    )
    print(
        f"fedge serve batch-1 round trip: p50 {serve['p50_us']:.0f} µs, p95 {serve['p95_us']:.0f} µs"
    )


if __name__ == "__main__":
    main()
