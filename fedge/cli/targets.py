"""`fedge target`: device artifacts made from a verified bundle (`ort` for ORT Mobile, `tflite`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fedge.cli.bundles import BundleDir, TrustedKey
from fedge.cli.common import app, fail

if TYPE_CHECKING:
    from fedge.client.runtime.verify import VerifiedBundle

target_app = typer.Typer(
    help="Device artifacts for other runtimes, made from a verified bundle.",
    no_args_is_help=True,
)
app.add_typer(target_app, name="target")
Out = Annotated[Path, typer.Option(help="Where to write the artifact.")]
Force = Annotated[bool, typer.Option(help="Replace an existing --out file.")]


@target_app.command("ort")
def ort_target(
    bundle_dir: BundleDir, out: Out, trusted_key: TrustedKey, force: Force = False
) -> None:
    """Convert a verified bundle's model to the ORT format for ORT Mobile (batch fixed to 1).

    The bundle is verified as `fedge verify` does (signature, manifest, size, sha256) before
    its model is parsed; the .ort is written atomically and onnxruntime's NNAPI verdict on
    the batch-1 model is printed. Any refusal writes nothing and exits 2.
    """
    _check_out(out, force)
    try:
        from fedge.compression.targets import TargetError, ort_artifact
    except ImportError as err:
        raise fail(
            f"fedge target ort needs onnx ({err.name}): pip install 'fedge[train]'"
        ) from None
    bundle = _verified(bundle_dir, trusted_key)
    try:
        artifact = ort_artifact(bundle.model_bytes)
    except TargetError as err:
        raise fail(str(err)) from None
    manifest, verdict = bundle.manifest, artifact.nnapi
    if artifact.input_name != manifest.input.name:
        raise fail(
            f"the model's input is {artifact.input_name!r}, the manifest says {manifest.input.name!r}"
        )
    _write(out, artifact.ort_bytes)
    print(
        f"wrote {out}: {len(artifact.ort_bytes)} bytes from model.onnx "
        f"({manifest.model_bytes} bytes), {manifest.model_id} version {manifest.version}, "
        f"input {list(artifact.input_shape)}; NNAPI as is: {verdict.suitability} "
        f"({verdict.partitions} partition(s), {verdict.supported_nodes}/{verdict.nodes} nodes)"
    )


@target_app.command("tflite")
def tflite_target(
    bundle_dir: BundleDir,
    out: Out,
    trusted_key: TrustedKey,
    calibration: Annotated[
        Path,
        typer.Option(
            help="npz with array x: raw samples as the model takes them (100 to 1,000 is "
            "plenty), to calibrate int8 ranges and to check the result's labels against ONNX."
        ),
    ],
    min_agreement: Annotated[
        float,
        typer.Option(help="Least share of calibration samples whose label must match ONNX's."),
    ] = 0.99,  # fedge.compression.targets.MIN_AGREEMENT, as runs require
    force: Force = False,
) -> None:
    """Convert a verified bundle's model to a full-integer int8 LiteRT model (.tflite).

    The same flatbuffer runs in LiteRT on phones and in TensorFlow Lite Micro on
    microcontrollers. Prints its flash bytes, the activation arena fedge plans for it, and
    TFLM's own arena when tflite-micro is installed. Needs the `litert` extra. A model whose
    labels agree with ONNX's on fewer than --min-agreement of the samples is not written.
    """
    _check_out(out, force)
    if not 0.0 <= min_agreement <= 1.0:
        raise fail(f"--min-agreement {min_agreement} is outside [0, 1]")
    try:
        from fedge.compression.tflite import TargetError, tflite_report, to_tflite
        from fedge.core.npz import checked_npz
        from fedge.core.ort import make_session, session_logits
        from fedge.core.settings import ConfigError
    except ImportError as err:
        raise fail(f"fedge target tflite needs {err.name}: pip install -e '.[litert]'") from None
    bundle = _verified(bundle_dir, trusted_key)
    try:
        samples = checked_npz(calibration, ("x",))["x"]
        artifact = to_tflite(bundle.model_bytes, samples)
        expected = session_logits(make_session(bundle.model_bytes), samples).argmax(axis=1)
        report = tflite_report(artifact, expected, samples)
    except (ConfigError, TargetError) as err:
        raise fail(str(err)) from None
    if report.agreement < min_agreement:
        raise fail(
            f"the tflite model's labels agree with ONNX's on {report.agreement:.2%} of "
            f"{len(samples)} samples; --min-agreement is {min_agreement:.2%}; nothing written"
        )
    _write(out, artifact.tflite_bytes)
    print(f"wrote {out}: {report.summary()}")


def _check_out(out: Path, force: bool) -> None:
    if out.is_dir():
        raise fail(f"--out {out} is a directory; give a file name")
    if out.exists() and not force:
        raise fail(f"--out {out} exists; pass --force to replace it")
    if not out.parent.is_dir():
        raise fail(f"--out {out}: directory {out.parent} does not exist")


def _verified(bundle_dir: Path, trusted_key: Path) -> VerifiedBundle:
    from fedge.client.runtime.verify import BundleError, load_public_key, verify_bundle_dir

    if not bundle_dir.is_dir():
        raise fail(
            f"BUNDLE_DIR {bundle_dir} is not a directory; give the directory holding "
            "manifest.json, manifest.sig and model.onnx (e.g. RUN/bundle)"
        )
    try:
        return verify_bundle_dir(bundle_dir, load_public_key(trusted_key))
    except BundleError as err:
        raise fail(str(err)) from None


def _write(out: Path, data: bytes) -> None:
    from fedge.core.io import atomic_write_bytes

    try:
        atomic_write_bytes(out, data)
    except OSError as err:
        raise fail(f"cannot write {out}: {err}") from None
