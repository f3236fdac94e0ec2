"""Device commands: `fedge infer`, `fedge serve`, `fedge keys` (no torch, no flwr needed)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from fedge.cli.common import app, console, fail, keys_app


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
) -> None:
    """Predict with the model store's current verified bundle (needs no torch, no network).

    Large inputs are read and predicted in batches; nothing is printed unless every sample
    is predicted.
    """
    import numpy as np

    from fedge.client.runtime.inputs import read_input_parts, require_finite
    from fedge.client.runtime.predictor import InputError, Predictor
    from fedge.client.runtime.verify import BundleError

    labels, probabilities = [], []
    try:
        predictor = Predictor(model_dir, trusted_key, warmup=0, check_interval=None)
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


@app.command()
def serve(
    model_dir: Annotated[Path, typer.Option(help="The device's model store.")],
    trusted_key: Annotated[
        Path, typer.Option(help="Public key (PEM) bundles must be signed with.")
    ],
    host: Annotated[
        str, typer.Option(help="Address to bind; loopback unless you mean otherwise.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (0 picks a free one).")] = 8765,
) -> None:
    """Serve predictions over local HTTP: POST /predict, GET /health; hot-reloads new bundles."""
    from fedge.client.runtime.predictor import Predictor
    from fedge.client.runtime.service import make_server
    from fedge.client.runtime.verify import BundleError

    try:
        predictor = Predictor(model_dir, trusted_key)
        server = make_server(predictor, host, port)
    except BundleError as err:
        raise fail(str(err)) from None
    except OSError as err:
        raise fail(f"cannot listen on {host}:{port}: {err}") from None
    bound_port = server.server_address[1]
    # One line on stdout that scripts and tests can wait for.
    print(
        f"serving {predictor.model_id} version {predictor.version} on http://{host}:{bound_port}",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


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
    console.print(f"private key: {private_path}\npublic key:  {public_path}", highlight=False)


from fedge.cli import bundles  # noqa: E402, F401  (registers install, verify, status after these)
