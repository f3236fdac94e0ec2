"""Device commands: `fedge infer`, `fedge serve`, `fedge profile`, `fedge keys` (no torch/flwr)."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from fedge.cli.bundles import Runtime, check_runtime
from fedge.cli.common import app, fail, keys_app, say


@app.command()
def infer(
    input_path: Annotated[
        str,
        typer.Argument(metavar="INPUT", help="Samples: .npy, .csv, .json, or - for JSON on stdin."),
    ],
    model_dir: Annotated[Path, typer.Option(help="The device's model store.")],
    trusted_key: Annotated[
        Path, typer.Option(help="Public key (PEM) bundles must be signed with.")
    ],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print labels, probabilities and model as JSON.")
    ] = False,
    batch_size: Annotated[
        int, typer.Option(min=1, max=65536, help="Samples per onnxruntime run.")
    ] = 1024,
    runtime: Runtime = "onnx",
) -> None:
    """Predict with the model store's current verified bundle (needs no torch, no network).

    Large inputs are read and predicted in batches; nothing is printed unless every sample
    is predicted.
    """
    import numpy as np

    from fedge.client.runtime.inputs import read_input_parts, require_finite
    from fedge.client.runtime.predictor import InputError, Predictor
    from fedge.client.runtime.verify import BundleError

    check_runtime(runtime)
    labels, probabilities = [], []
    try:
        predictor = Predictor(
            model_dir, trusted_key, warmup=0, check_interval=None, runtime=runtime
        )
        size = math.prod(predictor.sample_shape)
        for part in read_input_parts(input_path, size, rows=batch_size):
            for chunk in predictor.batches(part, batch_size):
                prediction = predictor.predict(require_finite(chunk, input_path))
                labels.append(prediction.labels)
                if as_json:
                    probabilities.append(prediction.probabilities)
        if not labels:
            raise InputError(f"{input_path} holds no samples")
    except (BundleError, InputError) as err:
        raise fail(str(err)) from None
    if as_json:
        _write_json(np.concatenate(labels), probabilities, predictor.model_id, predictor.version)
    else:
        for part in labels:
            sys.stdout.write("".join(f"{label}\n" for label in part.tolist()))


def _write_json(labels: Any, probabilities: list[Any], model_id: str, version: int) -> None:
    """What json.dumps(Prediction.to_json()) prints, written a batch of rows at a time."""
    out = sys.stdout
    out.write(f'{{"labels": {json.dumps(labels.tolist())}, "probabilities": [')
    for i, part in enumerate(probabilities):
        if len(part):
            out.write((", " if i else "") + json.dumps(part.round(6).tolist())[1:-1])
    out.write(f'], "model_id": {json.dumps(model_id)}, "version": {version}}}\n')


MaxConnections = Annotated[
    int,
    typer.Option(
        min=1,
        help="Open connections; past it a new one replaces the oldest that has not sent a "
        "request (or is idle), or is closed.",
    ),
]
HeaderTimeout = Annotated[
    float,
    typer.Option(min=0.1, help="Seconds to send a request's line and headers (from connecting)."),
]
RequestTimeout = Annotated[
    float, typer.Option(min=0.1, help="Seconds from a request's first byte to its answer.")
]
Workers = Annotated[
    int, typer.Option(min=1, max=64, help="Threads that parse requests and run the model.")
]
InferenceTimeout = Annotated[
    float,
    typer.Option(
        min=0.01,
        help="Seconds a prediction may wait for a worker and run; over it: 504 and the run is "
        "stopped.",
    ),
]


@app.command()
def serve(
    model_dir: Annotated[Path, typer.Option(help="The device's model store.")],
    trusted_key: Annotated[
        Path, typer.Option(help="Public key (PEM) bundles must be signed with.")
    ],
    host: Annotated[
        str, typer.Option(help="Address to bind; loopback unless you mean otherwise.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port (0 picks one).")] = 8765,
    token_file: Annotated[
        Path | None,
        typer.Option(help="File holding a bearer token every request but the probes must send."),
    ] = None,
    allow_no_token: Annotated[
        bool,
        typer.Option(help="Serve a non-loopback address without a token (anyone can use it)."),
    ] = False,
    max_body: Annotated[
        int, typer.Option(min=1024, max=256 << 20, help="Bytes in one request body.")
    ] = 4 << 20,
    max_connections: MaxConnections = 512,
    header_timeout: HeaderTimeout = 5.0,
    request_timeout: RequestTimeout = 30.0,
    workers: Workers = 2,
    inference_timeout: InferenceTimeout = 10.0,
    runtime: Runtime = "onnx",
) -> None:
    """Serve predictions over HTTP: POST /predict, GET /health, and KServe's v2 protocol.

    Newer verified bundles are picked up without a restart; a refused one never stops the
    server (GET /health reports it in last_error).
    """
    from fedge.client.runtime import httpserver
    from fedge.client.runtime.httpserver import ServerLimits, bind
    from fedge.client.runtime.predictor import Predictor
    from fedge.client.runtime.service import InferenceApp, ServiceLimits
    from fedge.client.runtime.verify import BundleError

    check_runtime(runtime)
    token = _serving_token(token_file, host, allow_no_token)
    limits = ServerLimits(
        max_connections=max_connections,
        header_timeout=header_timeout,
        request_timeout=request_timeout,
    )
    try:
        predictor = Predictor(model_dir, trusted_key, check_interval=None, runtime=runtime)
        sock = bind(host, port, limits.backlog)
    except BundleError as err:
        raise fail(str(err)) from None
    except OSError as err:
        raise fail(f"cannot listen on {host}:{port}: {err}") from None
    service = ServiceLimits(
        max_body, 16 * max_body, workers=workers, inference_timeout=inference_timeout
    )
    app_ = InferenceApp(predictor, token=token, limits=service)
    # One line on stdout that scripts and tests can wait for (the socket already listens).
    where = f"http://{f'[{host}]' if ':' in host else host}:{sock.getsockname()[1]}"
    print(f"serving {predictor.model_id} version {predictor.version} on {where}", flush=True)
    httpserver.serve(app_, sock, limits)


def _serving_token(token_file: Path | None, host: str, allow_no_token: bool) -> str | None:
    """The bearer token of `fedge serve`, or None where serving without one is allowed."""
    from fedge.client.runtime.files import UnsafeFileError
    from fedge.client.runtime.httpserver import is_loopback
    from fedge.core.bounded import read_named

    if token_file is not None:
        try:
            token = read_named(token_file, 4096).decode("ascii").strip()
        except (UnsafeFileError, UnicodeDecodeError) as err:
            raise fail(f"cannot read --token-file: {err}") from None
        if len(token) < 16 or not token.isprintable() or " " in token:
            raise fail("--token-file must hold one token of at least 16 printable ASCII characters")
        return token
    if not is_loopback(host):
        if not allow_no_token:
            raise fail(
                f"--host {host} is reachable from the network and there is no --token-file: "
                "anyone who can connect could use the model; pass --token-file, or "
                "--allow-no-token if that is what you want"
            )
        say(
            f"serving {host} without a token: anyone who can reach this port can query the model",
            label=("warning:", "bold yellow"),
        )
    return None


@app.command()
def profile(
    out: Annotated[Path, typer.Option(help="Where to write the profile (JSON).")],
    batch: Annotated[
        int, typer.Option(min=2, max=4096, help="A second batch size to measure besides 1.")
    ] = 32,
    iters: Annotated[int, typer.Option(min=20, max=100000, help="Timed runs per probe.")] = 300,
    name: Annotated[str, typer.Option(help="A label for this device (e.g. gateway-3).")] = "",
) -> None:
    """Measure this device for the student search (needs no torch, no network).

    Times the probe models shipped with fedge in onnxruntime (p50/p95, batch 1 and --batch) and
    records the CPU, cores, memory and onnxruntime version. Give the file to
    `fedge compress RUN --search --device-profile FILE`.
    """
    from fedge.client.runtime.profile import measure
    from fedge.core.io import atomic_write_json

    if out.exists() and out.is_dir():
        raise fail(f"--out {out} is a directory; give a file name")
    if not out.parent.is_dir():
        raise fail(f"--out {out}: directory {out.parent} does not exist")
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise fail(f"--out {out}: directory {out.parent} is not writable")
    result = measure((1, batch), iters=iters, name=name)
    try:
        atomic_write_json(out, result)
    except OSError as err:  # e.g. a file system that takes no new files (/proc)
        raise fail(f"cannot write {out}: {err.strerror or err}") from None
    b1 = sorted(p["batches"]["1"]["p50_us"] for p in result["probes"].values())
    say(
        f"{len(b1)} probes in {result['seconds']:.1f} s on {result['device']['cpu']}: "
        f"batch 1 p50 {b1[0]:.1f} to {b1[-1]:.1f} µs -> {out}"
    )


@keys_app.command("generate")
def keys_generate(
    out: Annotated[
        Path, typer.Option(help="Directory for signing.key (0600) and signing.pub.")
    ] = Path("keys"),
) -> None:
    """Make an Ed25519 key pair for signing bundles; devices trust signing.pub."""
    from fedge.compression.bundle import generate_keypair

    try:
        private_path, public_path = generate_keypair(out)
    except FileExistsError as err:
        raise fail(str(err)) from None
    except OSError as err:  # --out under a file, or where this user cannot write
        raise fail(f"cannot write the key pair in {out}: {err.strerror or err}") from None
    say(f"private key: {private_path}\npublic key:  {public_path}")


from fedge.cli import bundles  # noqa: E402, F401  (registers install, verify, status after these)
