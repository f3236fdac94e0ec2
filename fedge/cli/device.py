"""Device commands: `fedge infer`, `fedge serve`, `fedge keys` (no torch, no flwr needed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

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
) -> None:
    """Predict with the model store's current verified bundle (needs no torch, no network)."""
    from fedge.client.runtime.inputs import read_inputs
    from fedge.client.runtime.predictor import InputError, Predictor
    from fedge.client.runtime.verify import BundleError

    try:
        predictor = Predictor(model_dir, trusted_key, warmup=0)
        prediction = predictor.predict(read_inputs(input_path))
    except (BundleError, InputError) as err:
        raise fail(str(err)) from None
    if as_json:
        print(json.dumps(prediction.to_json()))
    else:
        print("\n".join(str(label) for label in prediction.labels.tolist()))


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
