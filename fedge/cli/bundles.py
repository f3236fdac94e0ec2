"""Bundles that arrive outside Flower (USB, OTA, a file server): `fedge install`, `verify`, `status`.

They run the same checks as the Flower deploy handler, through the same functions: signature,
manifest, size and sha256, no external data, then (install) version and model line, then the
device-model check, and only then the bundle becomes current.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fedge.cli.common import app, fail
from fedge.client.runtime.devicecheck import CheckLimits

if TYPE_CHECKING:
    from fedge.client.runtime.devicecheck import CheckReport
    from fedge.client.runtime.verify import VerifiedBundle

BundleDir = Annotated[
    Path, typer.Argument(metavar="BUNDLE_DIR", help="manifest.json, manifest.sig, model.onnx.")
]
ModelDir = Annotated[Path, typer.Option(help="The device's model store.")]
TrustedKey = Annotated[Path, typer.Option(help="Public key (PEM) bundles must be signed with.")]
Runtime = Annotated[
    str,
    typer.Option(
        help="What this device runs: onnx (model.onnx in onnxruntime) | ort (the bundle's "
        "model.ort, ORT Mobile's format) | tflite (the bundle's model.tflite in LiteRT; needs "
        "ai-edge-litert).",
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
CheckMaxRunMs = Annotated[
    float,
    typer.Option(
        min=1.0,
        help="Device-model check: milliseconds one batch-1 run may take on any check input "
        "(zeros, the manifest's mean, the mean -+ 8 standard deviations); a slower model is "
        "refused.",
    ),
]
CheckMaxMemoryMb = Annotated[
    int,
    typer.Option(
        min=64,
        help="Device-model check: peak resident MB of the check process (python and "
        "onnxruntime take ~70 MB before the model); a model that needs more is refused.",
    ),
]


@app.command()
def install(
    bundle_dir: BundleDir,
    model_dir: ModelDir,
    trusted_key: TrustedKey,
    allow_model_switch: Annotated[
        bool, typer.Option(help="Accept a bundle of another model_id than the installed one.")
    ] = False,
    check_max_run_ms: CheckMaxRunMs = CheckLimits.max_run_ms,
    check_max_memory_mb: CheckMaxMemoryMb = CheckLimits.max_peak_mb,
    tier: Annotated[
        str,
        typer.Option(
            help="This device's tier (a name of the run's tiers setting): a bundle made for "
            "another tier is refused. Empty: any bundle."
        ),
    ] = "",
    runtime: Runtime = "onnx",
) -> None:
    """Verify a bundle directory and make it the store's current model (as a Flower deploy does).

    Installing the version that is already current is a success that changes nothing; any
    refusal installs nothing, exits 2 and is recorded for `fedge status`.
    """
    from fedge.client.runtime.devicecheck import check_device_model
    from fedge.client.runtime.store import ModelStore
    from fedge.client.runtime.verify import BundleError, load_public_key, read_bundle_dir
    from fedge.core.bundle_format import TIER_NAME

    limits = CheckLimits.peak(check_max_run_ms, check_max_memory_mb)
    if tier and not TIER_NAME.fullmatch(tier):
        raise fail(f"--tier {tier[:40]!r} is not a tier name; allowed: {TIER_NAME.pattern}")
    check_runtime(runtime)
    if not bundle_dir.is_dir():
        raise fail(f"no bundle directory at {bundle_dir}")
    store = ModelStore(model_dir)
    try:
        key = load_public_key(trusted_key)
        try:
            files = read_bundle_dir(bundle_dir, key)
        except BundleError as err:
            store.record_refusal(err)
            raise
        outcome = store.install(
            files,
            key,
            allow_model_switch=allow_model_switch,
            device_check=partial(check_device_model, limits=limits),
            tier=tier,
            runtime=runtime,
        )
    except BundleError as err:
        raise fail(str(err)) from None
    except OSError as err:
        raise fail(f"cannot write the model store {model_dir}: {err}") from None
    bundle = outcome.bundle
    what = "installed" if outcome.changed else "already installed:"
    print(f"{what} {bundle.model_id} version {bundle.version} in {model_dir}")


@app.command()
def verify(
    bundle_dir: BundleDir,
    trusted_key: TrustedKey,
    as_json: AsJson = False,
    check_max_run_ms: CheckMaxRunMs = CheckLimits.max_run_ms,
    check_max_memory_mb: CheckMaxMemoryMb = CheckLimits.max_peak_mb,
    runtime: Runtime = "onnx",
) -> None:
    """Check a bundle directory without installing it (no store, so no version check).

    Every check `fedge install` runs on a bundle by itself; the device-model check runs the
    model `--runtime` names.
    """
    limits = CheckLimits.peak(check_max_run_ms, check_max_memory_mb)
    check_runtime(runtime)
    if not bundle_dir.is_dir():
        raise fail(f"no bundle directory at {bundle_dir}")
    bundle, report = _checked(bundle_dir, trusted_key, runtime, limits)
    manifest = bundle.manifest
    shape = list(manifest.sample_shape)
    if as_json:
        summary = {
            "model_id": manifest.model_id,
            "version": manifest.version,
            "model_sha256": manifest.model_sha256,
            "model_bytes": manifest.model_bytes,
            "input_shape": shape,
            "labels": len(manifest.labels),
            "tier": manifest.tier,  # "": for any device
            "artifacts": {r: len(data) for r, data in sorted(bundle.artifacts.items())},
            "device_check": report.to_json(),
        }
        print(json.dumps({"ok": True, **summary}))
    else:
        print(
            f"ok: {manifest.model_id} version {manifest.version}, {manifest.model_bytes} bytes, "
            f"sha256 {manifest.model_sha256[:16]}..., input {shape}, {len(manifest.labels)} labels"
            f"{f', for tier {manifest.tier}' if manifest.tier else ''}; "
            f"device check: slowest run {max(report.runs_ms.values()):.1f} ms, peak "
            f"{report.peak_mb:.0f} MB"
            + "".join(f"; {a.runtime} artifact {a.bytes} bytes" for a in manifest.artifacts)
            + "".join(
                f" ({a.file} absent)"
                for a in manifest.artifacts
                if a.runtime not in bundle.artifacts
            )
            + (f"; checked in {runtime}" if runtime != "onnx" else "")
        )


@app.command()
def status(
    model_dir: ModelDir,
    trusted_key: Annotated[
        Path | None,
        typer.Option(help="Also verify the current bundle and show the rollback floor."),
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Show a model store: current version, model line, history, the last refusal, any damage."""
    from dataclasses import asdict

    from fedge.client.runtime.store import ModelStore
    from fedge.client.runtime.verify import BundleError, load_public_key

    if not model_dir.is_dir():
        raise fail(f"no model store at {model_dir}")
    store = ModelStore(model_dir)
    report: dict[str, Any] = store.status()
    if trusted_key is not None:
        try:
            key = load_public_key(trusted_key)
            floor = store.floor(key)
            report["floor"] = None if floor is None else asdict(floor)
            store.load(key)
            report["verified"] = True
        except BundleError as err:
            report["verified"] = False
            report["verify_error"] = str(err)
    if as_json:
        print(json.dumps(report))
        return
    _print_status(report)


def _print_status(report: dict[str, Any]) -> None:
    current = report["current_version"]
    print(f"model store:   {report['model_dir']}")
    print(f"current:       {current if current is not None else 'none'}")
    print(f"model line:    {report['model_id'] or 'none'}")
    print(f"highest:       {report['highest_version'] or 'none'} (state.json)")
    if report.get("floor"):
        floor = report["floor"]
        print(
            f"floor:         {floor['model_id']} version {floor['version']} "
            f"(CURRENT may not go below; {floor['witness']})"
        )
    print(f"on disk:       {', '.join(map(str, report['installed_versions'])) or 'none'}")
    if "verified" in report:
        print(f"verified:      {'yes' if report['verified'] else report['verify_error']}")
    for entry in report["history"][-5:]:
        if "damaged" in entry:
            print(f"installed:     damaged: {entry['damaged']}")
        else:
            print(
                f"installed:     {entry['installed']} {entry['model_id']} version {entry['version']}"
            )
    refusal = report["last_refusal"]
    if refusal and "damaged" not in refusal:
        print(f"last refusal:  {refusal['time']} {refusal['reason']}")
    else:
        print(f"last refusal:  {'damaged' if refusal else 'none'}")
    for line in report["damaged"]:
        print(f"damaged:       {line}")


def check_runtime(runtime: str) -> None:
    """Exit 2 naming the allowed runtimes when `runtime` is not one."""
    from fedge.core.bundle_format import RUNTIMES

    if runtime not in RUNTIMES:
        raise fail(f"--runtime {runtime[:40]!r} is not a runtime; allowed: {', '.join(RUNTIMES)}")


def _checked(
    bundle_dir: Path, trusted_key: Path, runtime: str, limits: CheckLimits
) -> tuple[VerifiedBundle, CheckReport]:
    """The verified bundle and the device-model check of `runtime`'s model; exit 2 if refused."""
    from fedge.client.runtime.devicecheck import DeviceModelError, check_device_model
    from fedge.client.runtime.verify import (
        BundleError,
        load_public_key,
        verify_bundle_dir,
    )

    try:
        bundle = verify_bundle_dir(bundle_dir, load_public_key(trusted_key))
        model = bundle.model_for(runtime)
        return bundle, check_device_model(model, bundle.manifest, limits=limits, runtime=runtime)
    except DeviceModelError as err:
        raise fail(str(BundleError("device-model", str(err)))) from None
    except BundleError as err:
        raise fail(str(err)) from None
