"""`fedge target`: device artifacts made from a verified bundle (today: `ort` for ORT Mobile)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedge.cli.bundles import BundleDir, TrustedKey
from fedge.cli.common import app, fail

target_app = typer.Typer(
    help="Device artifacts for other runtimes, made from a verified bundle.",
    no_args_is_help=True,
)
app.add_typer(target_app, name="target")


@target_app.command("ort")
def ort_target(
    bundle_dir: BundleDir,
    out: Annotated[Path, typer.Option(help="Where to write the .ort file.")],
    trusted_key: TrustedKey,
    force: Annotated[bool, typer.Option(help="Replace an existing --out file.")] = False,
) -> None:
    """Convert a verified bundle's model to the ORT format for ORT Mobile (batch fixed to 1).

    The bundle is verified as `fedge verify` does (signature, manifest, size, sha256) before
    its model is parsed; the .ort is written atomically and onnxruntime's NNAPI verdict on
    the batch-1 model is printed. Any refusal writes nothing and exits 2.
    """
    from fedge.client.runtime.verify import BundleError, load_public_key, verify_bundle_dir
    from fedge.core.io import atomic_write_bytes

    if not bundle_dir.is_dir():
        raise fail(
            f"BUNDLE_DIR {bundle_dir} is not a directory; give the directory holding "
            "manifest.json, manifest.sig and model.onnx (e.g. RUN/bundle)"
        )
    if out.is_dir():
        raise fail(f"--out {out} is a directory; give a file name")
    if out.exists() and not force:
        raise fail(f"--out {out} exists; pass --force to replace it")
    if not out.parent.is_dir():
        raise fail(f"--out {out}: directory {out.parent} does not exist")
    try:
        from fedge.compression.targets import TargetError, ort_artifact
    except ImportError as err:
        raise fail(
            f"fedge target ort needs onnx ({err.name}): pip install 'fedge[train]'"
        ) from None
    try:
        bundle = verify_bundle_dir(bundle_dir, load_public_key(trusted_key))
        artifact = ort_artifact(bundle.model_bytes)
    except (BundleError, TargetError) as err:
        raise fail(str(err)) from None
    manifest, verdict = bundle.manifest, artifact.nnapi
    if artifact.input_name != manifest.input.name:
        raise fail(
            f"the model's input is {artifact.input_name!r}, the manifest says {manifest.input.name!r}"
        )
    try:
        atomic_write_bytes(out, artifact.ort_bytes)
    except OSError as err:
        raise fail(f"cannot write {out}: {err}") from None
    print(
        f"wrote {out}: {len(artifact.ort_bytes)} bytes from model.onnx "
        f"({manifest.model_bytes} bytes), {manifest.model_id} version {manifest.version}, "
        f"input {list(artifact.input_shape)}; NNAPI as is: {verdict.suitability} "
        f"({verdict.partitions} partition(s), {verdict.supported_nodes}/{verdict.nodes} nodes)"
    )
