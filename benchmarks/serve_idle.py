"""`fedge serve` under an idle-connection flood: an authenticated client's latency, with and without.

A second process (this script with --hold) keeps N connections open that never send a byte,
reopening any the server closes, as an attacker without the token would. Meanwhile this process
sends batch-1 POST /predict requests with the token, one at a time, and records each round trip
and its status:

- baseline: no flood, one keep-alive connection;
- flood, keep-alive: the client's connection was opened before the flood;
- flood, fresh connections: a new connection per request (it must get past the connection cap).

Target: with 1,000 idle connections held, p99 < 100 ms on both flood phases and every answer 200.
The server runs with its default limits (--max-connections 512, --header-timeout 5).

    python benchmarks/serve_idle.py --json OUT.json [--connections 1000] [--requests 500]
    python benchmarks/serve_idle.py --model-dir STORE --trusted-key KEY --json OUT.json

Without --model-dir, a digits student (untrained: latency does not depend on the weights) is
exported and installed in a temporary store. Everything binds 127.0.0.1; both processes share
the machine with the server, so run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import selectors
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

TOKEN = "benchmark-token-0123456789"
TARGET_P99_MS = 100.0


def _demo_store(work: Path) -> tuple[Path, Path]:
    """A digits student bundle, signed and installed in a fresh store (needs torch)."""
    from fedge.client.runtime.store import ModelStore
    from fedge.client.runtime.verify import load_public_key
    from fedge.compression.bundle import (
        BundleConfig,
        generate_keypair,
        load_private_key,
        make_bundle,
    )
    from fedge.compression.export import ExportConfig, export_onnx, fold_device_ops
    from fedge.core.data import load_dataset
    from fedge.core.models import build_student

    digits = load_dataset("digits")
    prep = digits.preprocessing
    exported = export_onnx(build_student((1, 8, 8), 10, "small", seed=0), (1, 8, 8), ExportConfig())
    model = fold_device_ops(exported, prep, check_x=prep.apply(digits.x[:64]))
    config = BundleConfig(
        model_id="serve-idle", version=1, input_name="input", input_shape=(None, 1, 8, 8),
        output_name="logits", probabilities_name="probabilities", label_name="label",
        preprocessing={**prep.to_json(), "in_model": True}, labels=tuple(range(10)),
        metrics={}, compression={}, quantized=False,
    )  # fmt: skip
    private, public = generate_keypair(work / "keys")
    files = make_bundle(model, config, load_private_key(private))
    ModelStore(work / "store").install(files, load_public_key(public))
    return work / "store", public


@contextmanager
def _serving(store: Path, key: Path, token_file: Path) -> Iterator[int]:
    """`fedge serve` with a token on 127.0.0.1 and a free port; stopped by pid."""
    command = [sys.executable, "-m", "fedge", "serve", "--model-dir", str(store)]
    command += ["--trusted-key", str(key), "--port", "0", "--token-file", str(token_file)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        yield int(proc.stdout.readline().rsplit(":", 1)[1])
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@contextmanager
def _flood(port: int, connections: int) -> Iterator[subprocess.Popen]:
    """The --hold process; its report is read when the phase ends."""
    command = [sys.executable, __file__, "--hold", str(port), "--connections", str(connections)]
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("holding"), "the flood did not start"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def _stop_flood(proc: subprocess.Popen) -> dict[str, Any]:
    out, _ = proc.communicate(input="stop\n", timeout=60)
    return json.loads(out.strip().splitlines()[-1])


def hold(port: int, connections: int) -> None:
    """Keep `connections` silent connections open until stdin says stop; report reconnects."""
    selector = selectors.DefaultSelector()
    selector.register(sys.stdin, selectors.EVENT_READ, "stdin")
    reopened, failed = 0, 0

    def open_one() -> None:
        nonlocal failed
        sock = socket.socket()
        sock.setblocking(False)
        if sock.connect_ex(("127.0.0.1", port)) not in (0, 115):  # 115: EINPROGRESS
            failed += 1
            sock.close()
            return
        selector.register(sock, selectors.EVENT_READ, "conn")

    for _ in range(connections):
        open_one()
    print("holding", flush=True)
    while True:
        for key, _ in selector.select(timeout=1.0):
            if key.data == "stdin":
                sys.stdin.readline()
                held = len(selector.get_map()) - 1
                print(json.dumps({"reopened": reopened, "failed": failed, "held": held}))
                return
            sock = key.fileobj
            try:
                data = sock.recv(4096)
            except OSError:
                data = b""
            if not data:  # closed by the server: open another in its place
                selector.unregister(sock)
                sock.close()
                reopened += 1
                open_one()


def _round_trip(sock: socket.socket, request: bytes) -> tuple[float, int]:
    """(seconds, status) of one request on `sock`; status 0 when the connection is closed."""
    start = time.perf_counter()
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return time.perf_counter() - start, 0
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            return time.perf_counter() - start, 0
        body += chunk
    return time.perf_counter() - start, int(head.split()[1])


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _phase(
    port: int, request: bytes, requests: int, fresh: bool, sock: socket.socket | None = None
) -> dict[str, Any]:
    """`requests` round trips, one at a time, on one keep-alive connection or fresh ones.

    A kept-alive connection the server closed is opened again for the next request (the
    failed one counts, with status 0 or -1).
    """
    times, statuses = [], []
    if not fresh and sock is None:
        sock = _connect(port)
    for _ in range(requests):
        try:
            if fresh:
                start = time.perf_counter()
                with _connect(port) as one:
                    _, status = _round_trip(one, request)
                elapsed = time.perf_counter() - start  # connecting counts
            else:
                sock = sock or _connect(port)
                elapsed, status = _round_trip(sock, request)
        except OSError:
            elapsed, status = float("nan"), -1
        if status != 200 and not fresh:  # reconnect for the next request
            if sock is not None:
                sock.close()
            try:
                sock = _connect(port)
            except OSError:  # counted with the next request (status -1)
                sock = None
        times.append(elapsed)
        statuses.append(status)
    if sock is not None:
        sock.close()
    ms = np.asarray([t for t in times if t == t]) * 1e3
    counts = {str(s): statuses.count(s) for s in sorted(set(statuses))}
    return {
        "requests": requests,
        "statuses": counts,
        **{f"p{q}_ms": float(np.percentile(ms, q)) if len(ms) else None for q in (50, 95, 99)},
    }


def _measure(port: int, args: argparse.Namespace, sample: list[float]) -> dict[str, Any]:
    body = json.dumps({"inputs": [sample]}).encode()
    head = f"POST /predict HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {TOKEN}\r\n"
    request = (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    _phase(port, request, 50, fresh=False)  # warm up
    result = {"baseline": _phase(port, request, args.requests, fresh=False)}
    keep_alive = _connect(port)  # opened before the flood, by a client that has spoken
    _round_trip(keep_alive, request)
    with _flood(port, args.connections) as flood:
        time.sleep(args.settle)  # let the server take in the flood
        result["flood_keep_alive"] = _phase(
            port, request, args.requests, fresh=False, sock=keep_alive
        )
        result["flood_fresh_connections"] = _phase(port, request, args.requests, fresh=True)
        result["flood"] = _stop_flood(flood)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", type=Path, help="where to write the results")
    parser.add_argument("--model-dir", type=Path, help="an installed model store")
    parser.add_argument("--trusted-key", type=Path, help="the store's public key")
    parser.add_argument("--connections", type=int, default=1000, help="idle connections held")
    parser.add_argument("--requests", type=int, default=500, help="round trips per phase")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds before measuring")
    parser.add_argument("--hold", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hold is not None:
        hold(args.hold, args.connections)
        return
    if args.json is None or (args.model_dir is None) != (args.trusted_key is None):
        parser.error("give --json, and --model-dir with --trusted-key or neither")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        store, key = (args.model_dir, args.trusted_key)
        if store is None:
            store, key = _demo_store(work)
        (work / "token").write_text(TOKEN + "\n")
        sample = np.random.default_rng(0).uniform(0, 16, 64).astype(np.float32).tolist()
        with _serving(store, key, work / "token") as port:
            phases = _measure(port, args, sample)
    _report(args, phases)


def _report(args: argparse.Namespace, phases: dict[str, Any]) -> None:
    flood_phases = ("flood_keep_alive", "flood_fresh_connections")
    met = all(
        phases[p]["p99_ms"] is not None
        and phases[p]["p99_ms"] < TARGET_P99_MS
        and phases[p]["statuses"] == {"200": args.requests}
        for p in flood_phases
    )
    result = {
        "config": {
            "connections": args.connections,
            "requests": args.requests,
            "settle_s": args.settle,
            "model_dir": str(args.model_dir) if args.model_dir else "digits student (demo)",
            "server_limits": "defaults (--max-connections 512, --header-timeout 5)",
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        },
        **phases,
        "target": {"p99_ms_under_flood": TARGET_P99_MS, "all_200": True},
        "met": met,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'phase':26}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}  statuses")
    for name in ("baseline", *flood_phases):
        row = phases[name]
        cells = "".join(f"{row[k]:>9.2f}" if row[k] is not None else f"{'-':>9}" for k in
                        ("p50_ms", "p95_ms", "p99_ms"))  # fmt: skip
        print(f"{name:26}{cells}  {row['statuses']}")
    print(f"flood: {phases['flood']}; target met: {met}")


if __name__ == "__main__":
    main()
