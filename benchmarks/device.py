"""Device runtime: Predictor.predict vs a bare session.run, and `fedge serve` under load on loopback.

Both in-process sides run the same verified model, interleaved, at batch 1. `fedge serve` runs
as its own process; this process is the load generator (asyncio, raw HTTP/1.1 keep-alive):

- 1 client: batch-1 POST /predict round trips, one at a time (target: p50 < 1 ms);
- 50 clients, one keep-alive connection each, for a fixed time (target: >= 2,000 req/s with
  p99 < 50 ms);
- 200 connections opened at once, one request each (target: all answered within 10 s).

    python benchmarks/device.py --run-dir RUN_DIR --json OUT.json [--quick]
    python benchmarks/device.py --model-dir STORE --trusted-key KEY --json OUT.json [--quick]

RUN_DIR is a finished `fedge simulate` run: its bundle is installed into a temporary model
store and verified with the run's public key. --quick shortens every phase (about 15 s in
all); the load generator shares the machine with the server, so run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from fedge.client.runtime.predictor import Predictor, bare_session
from fedge.client.runtime.store import ModelStore
from fedge.client.runtime.verify import load_public_key, read_bundle_dir
from fedge.core.ort import interleaved_latency_us

TARGETS = {"p50_1_client_ms": 1.0, "req_per_s_50_clients": 2000, "p99_50_clients_ms": 50.0}


def _store_from_run(run_dir: Path, work: Path) -> tuple[Path, Path]:
    key = run_dir / "keys" / "signing.pub"
    store = work / "model-store"
    public = load_public_key(key)
    ModelStore(store).install(read_bundle_dir(run_dir / "bundle", public), public)
    return store, key


@contextmanager
def _serving(store: Path, key: Path) -> Iterator[int]:
    """`fedge serve` in its own process; yields its port, stops it by pid."""
    command = [sys.executable, "-m", "fedge", "serve", "--model-dir", str(store)]
    proc = subprocess.Popen(
        [*command, "--trusted-key", str(key), "--port", "0"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        yield int(proc.stdout.readline().rsplit(":", 1)[1])
    finally:
        proc.terminate()
        proc.wait(timeout=10)


class _Client:
    """One keep-alive HTTP/1.1 connection that sends a fixed request."""

    def __init__(self, port: int, request: bytes) -> None:
        self.port, self.request = port, request
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def call(self) -> float:
        """Seconds for one round trip; raises unless the answer is 200."""
        assert self.reader is not None and self.writer is not None
        start = time.perf_counter()
        self.writer.write(self.request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        await self.reader.readexactly(length)
        elapsed = time.perf_counter() - start
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head.split(b"\r\n")[0].decode())
        return elapsed

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {f"p{q}_ms": float(np.percentile(ms, q)) for q in (50, 95, 99)}


async def _one_client(port: int, request: bytes, iters: int, warmup: int) -> dict[str, Any]:
    client = _Client(port, request)
    await client.open()
    for _ in range(warmup):
        await client.call()
    times = [await client.call() for _ in range(iters)]
    client.close()
    return {"requests": iters, **_percentiles(times)}


async def _concurrent(port: int, request: bytes, clients: int, seconds: float) -> dict[str, Any]:
    conns = [_Client(port, request) for _ in range(clients)]
    await asyncio.gather(*(c.open() for c in conns))
    await asyncio.gather(*(c.call() for c in conns))  # warm every connection
    times: list[float] = []
    deadline = time.perf_counter() + seconds

    async def loop(client: _Client) -> None:
        while time.perf_counter() < deadline:
            times.append(await client.call())

    start = time.perf_counter()
    await asyncio.gather(*(loop(c) for c in conns))
    elapsed = time.perf_counter() - start
    for c in conns:
        c.close()
    return {"clients": clients, "seconds": elapsed, "requests": len(times),
            "req_per_s": len(times) / elapsed, **_percentiles(times)}  # fmt: skip


async def _burst(port: int, request: bytes, connections: int, limit: float) -> dict[str, Any]:
    """Open `connections` at once, one request each; how many are answered within `limit` s."""
    start = time.perf_counter()

    async def one() -> float | None:
        client = _Client(port, request)
        try:
            await client.open()
            await client.call()
            return time.perf_counter() - start
        except (OSError, RuntimeError, asyncio.IncompleteReadError):
            return None
        finally:
            client.close()

    tasks = [asyncio.ensure_future(one()) for _ in range(connections)]
    done, pending = await asyncio.wait(tasks, timeout=limit)
    for task in pending:
        task.cancel()
    finished = [t.result() for t in done if t.result() is not None]
    return {"connections": connections, "answered": len(finished), "limit_s": limit,
            "last_answer_s": max(finished, default=None)}  # fmt: skip


def _serve_load(store: Path, key: Path, sample: list[float], quick: bool) -> dict[str, Any]:
    body = json.dumps({"inputs": [sample]}).encode()
    head = f"POST /predict HTTP/1.1\r\nHost: bench\r\nContent-Length: {len(body)}\r\n\r\n"
    request = head.encode() + body
    with _serving(store, key) as port:
        return {
            "one_client": asyncio.run(_one_client(port, request, 500 if quick else 3000, 200)),
            "concurrent": asyncio.run(_concurrent(port, request, 50, 3.0 if quick else 15.0)),
            "burst": asyncio.run(_burst(port, request, 200, 10.0)),
        }


def _verdicts(serve: dict[str, Any]) -> dict[str, bool]:
    one, many, burst = serve["one_client"], serve["concurrent"], serve["burst"]
    return {
        "p50_1_client_under_1_ms": one["p50_ms"] < TARGETS["p50_1_client_ms"],
        "2000_req_per_s_at_50_clients": many["req_per_s"] >= TARGETS["req_per_s_50_clients"],
        "p99_at_50_clients_under_50_ms": many["p99_ms"] < TARGETS["p99_50_clients_ms"],
        "200_connections_within_10_s": burst["answered"] == burst["connections"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run-dir", type=Path, help="a finished fedge simulate run")
    parser.add_argument("--model-dir", type=Path, help="or: an installed model store")
    parser.add_argument("--trusted-key", type=Path, help="the store's public key")
    parser.add_argument("--json", type=Path, required=True, help="where to write the results")
    parser.add_argument("--iters", type=int, default=3000)
    parser.add_argument("--quick", action="store_true", help="short phases (a smoke test)")
    args = parser.parse_args()
    if (args.run_dir is None) == (args.model_dir is None or args.trusted_key is None):
        parser.error("give --run-dir, or --model-dir with --trusted-key")
    iters = 500 if args.quick else args.iters
    with tempfile.TemporaryDirectory() as tmp:
        if args.run_dir is not None:
            store, key = _store_from_run(args.run_dir, Path(tmp))
        else:
            store, key = args.model_dir, args.trusted_key
        predictor = Predictor(store, key, warmup=0)
        session = bare_session(store, key)
        shape = (1, *predictor.sample_shape)
        raw = np.random.default_rng(0).uniform(0, 16, size=shape).astype(np.float32)
        prepped = predictor.model_input(raw)  # the bare run gets exactly what the model sees
        name = session.get_inputs()[0].name
        lat = interleaved_latency_us(
            {
                "bare_session_run": lambda: session.run(None, {name: prepped}),
                "predictor_predict": lambda: predictor.predict(raw),
            },
            warmup=200 if args.quick else 500,
            iters=iters,
        )
        serve = _serve_load(store, key, raw.reshape(-1).tolist(), args.quick)
    overhead = lat["predictor_predict"]["p50"] / lat["bare_session_run"]["p50"] - 1
    overhead_cpu = lat["predictor_predict"]["cpu_p50"] / lat["bare_session_run"]["cpu_p50"] - 1
    result = {
        "config": {
            "run_dir": Path(args.run_dir or args.model_dir).name,  # by name: no machine's path
            "iters": iters,
            "quick": args.quick,
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "model_id": predictor.model_id,
            "version": predictor.version,
        },
        "latency_us": lat,
        "predictor_overhead_b1": overhead,
        "predictor_overhead_b1_cpu": overhead_cpu,
        "serve": serve,
        "targets": TARGETS,
        "met": _verdicts(serve),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'':24}{'p50 µs':>10}{'cpu p50 µs':>12}")
    for name, row in lat.items():
        print(f"{name:24}{row['p50']:>10.1f}{row['cpu_p50']:>12.1f}")
    print(
        f"Predictor overhead at batch 1: {100 * overhead:+.1f} % wall, {100 * overhead_cpu:+.1f} % cpu"
    )
    one, many, burst = serve["one_client"], serve["concurrent"], serve["burst"]
    print(f"fedge serve, 1 client: p50 {one['p50_ms']:.3f} ms, p99 {one['p99_ms']:.3f} ms")
    print(
        f"fedge serve, 50 clients: {many['req_per_s']:.0f} req/s, p50 {many['p50_ms']:.2f} ms, "
        f"p99 {many['p99_ms']:.2f} ms"
    )
    print(f"fedge serve, 200 connections at once: {burst['answered']} answered within 10 s")
    print("targets met:", ", ".join(f"{k}={v}" for k, v in result["met"].items()))


if __name__ == "__main__":
    main()
