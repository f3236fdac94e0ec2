"""The bundle manifest as one typed value: how the server writes manifest.json and the device reads it.

Pure Python (no torch, no flwr, no onnx): the device runtime imports it. `Manifest.to_json` is
the only writer of manifest.json and `Manifest.from_json` the only reader; both run
`bundle_format.schema_errors`, so nothing writes a manifest the device would refuse, and the
device refuses with the same one-line reasons whoever asks. The reader ignores keys it does
not know (a newer server may add some); the compression block stays a plain JSON object,
because the device cannot import the torch-side configs it describes.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from fedge.core import bundle_format as fmt

Statistic = float | tuple[float, ...]  # one value for every input value, or one per feature
PREPROCESSING_KEYS = ("input_shape", "in_model", "shift", "scale")


class ManifestError(ValueError):
    """manifest.json is not a manifest the device can serve; the message says why."""


@dataclass(frozen=True)
class InputSpec:
    """The model's one input: name, shape (None for the batch axis) and dtype."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str = "float32"

    def to_dict(self) -> dict[str, Any]:
        """The manifest's "input" object."""
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class OutputSpec:
    """The model's outputs: the device contract (probabilities and label) and the logits."""

    probabilities: str  # softmax probabilities, (N, classes) float32
    label: str  # the predicted class index, (N,) int64
    name: str | None = None  # the logits output (the device does not read it)

    def to_dict(self) -> dict[str, Any]:
        """The manifest's "output" object."""
        return {"name": self.name, "probabilities": self.probabilities, "label": self.label}


@dataclass(frozen=True)
class PreprocessingSpec:
    """x_model = (x_raw - shift) * scale, applied inside the model's graph (in_model)."""

    input_shape: tuple[int, ...]  # the raw per-sample shape, channels first
    in_model: bool = True  # the device contract: the model takes raw input
    shift: Statistic | None = None  # None: not stated (the schema reads it as 0)
    scale: Statistic | None = None

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> PreprocessingSpec:
        """The typed form of a "preprocessing" object; lists become tuples, nothing is checked.

        Unknown keys are left out; `Manifest.to_json` and `Manifest.from_dict` check the values.
        """
        return cls(
            input_shape=_tuple(value.get("input_shape")),
            in_model=value.get("in_model") is True,  # anything else: the schema refuses it
            shift=_tuple(value.get("shift")),
            scale=_tuple(value.get("scale")),
        )

    def to_dict(self) -> dict[str, Any]:
        """The manifest's "preprocessing" object (shift and scale only when stated)."""
        out: dict[str, Any] = {"input_shape": _list(self.input_shape), "in_model": self.in_model}
        for key, value in (("shift", self.shift), ("scale", self.scale)):
            if value is not None:
                out[key] = _list(value)
        return out


@dataclass(frozen=True)
class Artifact:
    """A model file for another runtime than onnxruntime, bound to the manifest by its hash."""

    runtime: str  # a key of bundle_format.ARTIFACTS ("tflite")
    file: str  # its file name in the bundle
    bytes: int
    sha256: str
    input_shape: tuple[int, ...]  # fixed, batch first (LiteRT and TFLM take batch 1)

    def to_dict(self) -> dict[str, Any]:
        """The manifest's entry for this artifact."""
        return {**dataclasses.asdict(self), "input_shape": list(self.input_shape)}

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> Artifact:
        """An entry that `bundle_format.artifact_errors` found nothing wrong with."""
        known = {f.name: value[f.name] for f in dataclasses.fields(cls)}
        return cls(**{**known, "input_shape": tuple(value["input_shape"])})


@dataclass(frozen=True)
class Manifest:
    """manifest.json: what the model is, what it expects, and the hash that binds it.

    Parameters
    ----------
    model_id
        The model line (devices pin one; a switch needs consent).
    version
        Monotonic; a device refuses anything not newer than what it has.
    created
        ISO time of signing.
    input, output, preprocessing
        The device contract: one raw float32 input, probability and label outputs.
    labels
        The class label of each probability column (int64, unique).
    model_bytes, model_sha256
        Size and sha256 of model.onnx.
    quantized
        Whether model.onnx is int8.
    metrics
        Figures measured at export (plain JSON).
    compression
        The stage configs that made the model (plain JSON: the device cannot import them).
    architecture
        The student's family name or searched spec (not read by the device).
    format
        The bundle format and its version.
    tier
        The device tier the bundle is for ("": any device); a device of another tier refuses it.
    artifacts
        The same model for other runtimes (a `tflite` file), each with its size and sha256.

    """

    model_id: str
    version: int
    created: str
    input: InputSpec
    output: OutputSpec
    preprocessing: PreprocessingSpec
    labels: tuple[int, ...]
    model_bytes: int
    model_sha256: str
    quantized: bool
    metrics: dict[str, Any] = field(default_factory=dict)
    compression: dict[str, Any] = field(default_factory=dict)
    architecture: str = ""
    format: str = fmt.FORMAT
    tier: str = ""
    artifacts: tuple[Artifact, ...] = ()

    def artifact(self, runtime: str) -> Artifact | None:
        """The listed artifact for `runtime`, or None."""
        return next((a for a in self.artifacts if a.runtime == runtime), None)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The raw per-sample shape the model takes (without the batch axis)."""
        return self.preprocessing.input_shape

    def to_dict(self) -> dict[str, Any]:
        """The manifest as a JSON object (unchecked; to_json checks it)."""
        return {
            "format": self.format,
            "model_id": self.model_id,
            "version": self.version,
            "created": self.created,
            "input": self.input.to_dict(),
            "output": self.output.to_dict(),
            "preprocessing": self.preprocessing.to_dict(),
            "labels": list(self.labels),
            "metrics": self.metrics,
            "compression": self.compression,
            "quantized": self.quantized,
            "architecture": self.architecture,
            "model_bytes": self.model_bytes,
            "model_sha256": self.model_sha256,
            **({"tier": self.tier} if self.tier else {}),  # untiered bundles: as before
            **({"artifacts": [a.to_dict() for a in self.artifacts]} if self.artifacts else {}),
        }

    def to_json(self) -> bytes:
        """The manifest.json bytes: canonical (sorted keys, indent 1), schema-checked.

        Raises
        ------
        ManifestError
            When the device would refuse this manifest (the schema's reasons, joined by "; ").

        """
        value = self.to_dict()
        errors = fmt.schema_errors(value)
        if errors:
            raise ManifestError("; ".join(errors))
        return json.dumps(value, sort_keys=True, indent=1).encode()

    @classmethod
    def from_dict(cls, value: Any) -> Manifest:
        """A manifest from a parsed JSON value, once `schema_errors` finds nothing wrong.

        Raises
        ------
        ManifestError
            With every reason the schema gives, joined by "; ".

        """
        errors = fmt.schema_errors(value)
        if errors:
            raise ManifestError("; ".join(errors))
        spec, outputs = value["input"], value["output"]
        architecture = value.get("architecture", "")
        return cls(
            model_id=value["model_id"],
            version=value["version"],
            created=value["created"],
            input=InputSpec(spec["name"], tuple(spec["shape"]), spec["dtype"]),
            output=OutputSpec(
                outputs["probabilities"],
                outputs["label"],
                outputs.get("name") if isinstance(outputs.get("name"), str) else None,
            ),
            preprocessing=PreprocessingSpec.from_dict(value["preprocessing"]),
            labels=tuple(value["labels"]),
            model_bytes=value["model_bytes"],
            model_sha256=value["model_sha256"],
            quantized=value["quantized"],
            metrics=dict(value["metrics"]),
            compression=dict(value["compression"]),
            architecture=architecture if isinstance(architecture, str) else "",
            format=value["format"],
            tier=value.get("tier", ""),
            artifacts=tuple(Artifact.from_dict(a) for a in value.get("artifacts", [])),
        )

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        """Read manifest.json bytes: bounded, strict JSON (no NaN), schema-checked.

        Raises
        ------
        ManifestError
            "manifest.json has N bytes, more than ..." / "manifest.json is not usable JSON:
            ..." / the schema's reasons.

        """
        if len(data) > fmt.MAX_MANIFEST_BYTES:
            raise ManifestError(
                f"manifest.json has {len(data)} bytes, more than the "
                f"{fmt.MAX_MANIFEST_BYTES} allowed"
            )
        try:
            value = json.loads(data, parse_constant=_no_constant)
        except (ValueError, RecursionError) as err:
            detail = "nests too deeply" if isinstance(err, RecursionError) else str(err)[:200]
            raise ManifestError(f"manifest.json is not usable JSON: {detail}") from None
        return cls.from_dict(value)


def unverified_claims(data: bytes) -> dict[str, Any]:
    """What a manifest that may be invalid claims to be (version, model_id); {} if it says nothing.

    For the record of a refusal only: nothing here is trusted or checked beyond its type.
    """
    try:
        claimed = json.loads(data[: fmt.MAX_MANIFEST_BYTES])
        return {
            "claimed_version": int(claimed["version"]),
            "claimed_model_id": claimed["model_id"][:200],
        }
    except Exception:  # anything at all: the refusal is recorded without the claim
        return {}


def _tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list | tuple) else value


def _list(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")
