"""Predictor: serves the current verified bundle of a model store, and picks up newer ones."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedge.client.runtime.session import device_session, runtime_session
from fedge.client.runtime.store import ModelStore
from fedge.client.runtime.verify import BundleError, VerifiedBundle, load_public_key
from fedge.core.litert import LiteRtError

log = logging.getLogger("fedge.runtime")
BATCH_SIZE = 512  # samples per onnxruntime run: bounds the memory of large inputs


class InputError(ValueError):
    """The input has the wrong shape or dtype; the message says what is expected."""


@dataclass(slots=True)
class Prediction:
    """Labels and class probabilities for a batch, with the model that made them."""

    labels: np.ndarray  # (N,) int64, values from the manifest's labels
    probabilities: np.ndarray  # (N, num_classes) float32
    model_id: str
    version: int

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "labels": self.labels.tolist(),
            "probabilities": self.probabilities.round(6).tolist(),
            "model_id": self.model_id,
            "version": self.version,
        }


class _Loaded:
    """One verified bundle turned into a session, with what predict needs at hand."""

    def __init__(self, bundle: VerifiedBundle, warmup: int, runtime: str = "onnx") -> None:
        manifest = bundle.manifest
        self.model_id = manifest.model_id
        self.version = manifest.version
        self.sample_shape = manifest.sample_shape
        self.sample_size = math.prod(self.sample_shape)
        self.labels = np.asarray(manifest.labels, dtype=np.int64)
        self.identity_labels = bool(np.array_equal(self.labels, np.arange(len(self.labels))))
        self.input_name = manifest.input.name
        # The device contract (fedge's bundles): preprocessing inside the graph, so Python only
        # checks and casts, and probability and label outputs, so it computes nothing.
        self.output_names = [manifest.output.probabilities, manifest.output.label]
        try:
            self.session = _session(bundle, runtime, self.input_name, self.output_names)
            inputs = [i.name for i in self.session.get_inputs()]
            outputs = {o.name for o in self.session.get_outputs()}
            if inputs != [self.input_name] or not set(self.output_names) <= outputs:
                raise BundleError(
                    "device-model",
                    f"the model must take one raw input {self.input_name!r} and output "
                    f"{self.output_names}; it takes {inputs} and outputs {sorted(outputs)}",
                )
            zeros = np.zeros((1, *self.sample_shape), dtype=np.float32)
            for _ in range(warmup):
                self.session.run(self.output_names, {self.input_name: zeros})
        except BundleError:
            raise
        except Exception as err:  # onnxruntime's (or LiteRT's) own exception types
            text = " ".join(str(err).split())[-300:]
            engine = "LiteRT" if runtime == "tflite" else "onnxruntime"
            raise BundleError("device-model", f"{engine} cannot run the model: {text}") from None


def _session(bundle: VerifiedBundle, runtime: str, input_name: str, outputs: list[str]) -> Any:
    """The session on the bundle's model for `runtime` (BundleError when it has none)."""
    probabilities, label = outputs
    try:
        return runtime_session(
            bundle.model_for(runtime), runtime, (input_name, probabilities, label)
        )
    except LiteRtError as err:
        raise BundleError("device-model", str(err)) from None


class Predictor:
    """Run the model store's current bundle with onnxruntime (model.onnx or model.ort) or LiteRT.

    Every bundle is verified (signature, manifest, sha256) when loaded; a newer verified
    version is picked up without a restart (checked at most every `check_interval` seconds
    by predict, or by whoever calls `reload_if_newer`); a newer bundle that fails is refused,
    once, and the current one keeps serving (`last_error` says why).
    """

    def __init__(
        self,
        model_dir: Path | str,
        trusted_key: Path | str,
        *,
        warmup: int = 50,
        check_interval: float | None = 1.0,
        batch_size: int = BATCH_SIZE,
        runtime: str = "onnx",
    ) -> None:
        store = ModelStore(model_dir)
        key = load_public_key(trusted_key)
        self.runtime = runtime
        self._start(store, key, store.load(key), warmup, check_interval, batch_size)

    @classmethod
    def from_bundle(
        cls,
        store: ModelStore,
        key: Ed25519PublicKey,
        bundle: VerifiedBundle,
        *,
        warmup: int = 50,
        check_interval: float | None = 1.0,
        batch_size: int = BATCH_SIZE,
        runtime: str = "onnx",
    ) -> Predictor:
        """Serve a bundle that was just verified (what `ModelStore.install` returns).

        The deploy handler's way in: the bundle's bytes go straight into the session, instead
        of being read back from the store and verified a second time. Later versions are
        loaded from `store` and verified with `key`, as for a Predictor opened on a store.
        """
        predictor = cls.__new__(cls)
        predictor.runtime = runtime
        predictor._start(store, key, bundle, warmup, check_interval, batch_size)
        return predictor

    def _start(
        self,
        store: ModelStore,
        key: Ed25519PublicKey,
        bundle: VerifiedBundle,
        warmup: int,
        check_interval: float | None,
        batch_size: int,
    ) -> None:
        self.store = store
        self.key = key
        self.warmup = warmup
        self.check_interval = check_interval
        self.batch_size = batch_size
        self.last_error: str | None = None  # why the latest newer bundle was refused
        self._refused: int | None = None  # that bundle's version: not tried again
        self._lock = threading.Lock()
        self._loaded = _Loaded(bundle, warmup, self.runtime)
        self._next_check = self._after(check_interval)

    @property
    def model_id(self) -> str:
        """The serving model's id."""
        return self._loaded.model_id

    @property
    def version(self) -> int:
        """The serving model's version."""
        return self._loaded.version

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The per-sample shape the model expects (raw input may also be flat)."""
        return self._loaded.sample_shape

    @property
    def input_name(self) -> str:
        """The model's input name."""
        return self._loaded.input_name

    @property
    def output_names(self) -> tuple[str, str]:
        """The model's probabilities and label output names."""
        probabilities, label = self._loaded.output_names
        return probabilities, label

    @property
    def num_classes(self) -> int:
        """How many classes the probabilities cover."""
        return len(self._loaded.labels)

    @property
    def session(self) -> ort.InferenceSession:
        """The serving model's onnxruntime session (for timing it without predict's checks)."""
        return self._loaded.session

    def model_input(self, batch: Any) -> np.ndarray:
        """What predict feeds onnxruntime for raw samples: checked, reshaped, float32."""
        with np.errstate(over="ignore"):  # beyond float32: Inf, refused by the caller's check
            return self._shaped(batch, self._loaded).astype(np.float32, copy=False)

    def batches(self, batch: Any, size: int | None = None) -> Iterator[np.ndarray]:
        """The checked, reshaped samples as float32 chunks of at most `size` (memory: one chunk)."""
        x = self._shaped(batch, self._loaded)
        size = size or self.batch_size
        for start in range(0, len(x), size):
            with np.errstate(over="ignore"):  # beyond float32: Inf, refused by the caller's check
                chunk = np.ascontiguousarray(x[start : start + size], dtype=np.float32)
            yield chunk

    def reload_if_newer(self) -> bool:
        """Switch to a newer verified bundle if the store has one; True if switched."""
        with self._lock:
            self._next_check = self._after(self.check_interval)
            try:
                version = self.store.current_version()
            except BundleError as err:
                self.last_error = str(err)
                return False
            if version is None:  # CURRENT removed: say so, instead of an older refusal
                self.last_error = (
                    f"the store names no current version; serving {self._loaded.version} "
                    "from memory"
                )
            if version is not None and version < self._loaded.version:
                self.last_error = (
                    f"CURRENT says {version}, below the served {self._loaded.version}; "
                    "not rolling back"
                )
            if version is None or version <= self._loaded.version or version == self._refused:
                return False
            try:
                self._loaded = _Loaded(self.store.load(self.key), self.warmup, self.runtime)
            except BundleError as err:
                self._refused = version
                self.last_error = f"version {version} refused: {err}"
                log.warning("keeping version %d: %s", self._loaded.version, self.last_error)
                return False
            self.last_error = None
            log.info("now serving %s version %d", self._loaded.model_id, self._loaded.version)
            return True

    def predict(self, batch: Any, run_options: ort.RunOptions | None = None) -> Prediction:
        """Labels and probabilities for raw samples (the model applies the preprocessing).

        Accepts exactly (N, *sample_shape), (N, prod(sample_shape)), or one sample without the
        batch axis (sample_shape or (prod(sample_shape),)); any integer or float dtype. More
        than `batch_size` samples run in chunks. NaN/Inf are not checked on this hot path (they
        give NaN probabilities); `fedge infer` and `fedge serve` refuse them when parsing input.
        `run_options` go to every onnxruntime run (`fedge serve` stops a run that outlives its
        time limit through them).
        """
        if time.monotonic() >= self._next_check:
            self.reload_if_newer()
        loaded = self._loaded
        x = self._shaped(batch, loaded)
        if len(x) <= self.batch_size:
            feed = x if x.dtype == np.float32 else x.astype(np.float32)
            probabilities, best = loaded.session.run(
                loaded.output_names, {loaded.input_name: feed}, run_options
            )
        else:
            parts = [
                loaded.session.run(loaded.output_names, {loaded.input_name: chunk}, run_options)
                for chunk in self.batches(x)
            ]
            probabilities = np.concatenate([p for p, _ in parts])
            best = np.concatenate([b for _, b in parts])
        labels = best if loaded.identity_labels else loaded.labels[best]
        return Prediction(labels, probabilities, loaded.model_id, loaded.version)

    @staticmethod
    def _after(interval: float | None) -> float:
        return math.inf if interval is None else time.monotonic() + interval

    @staticmethod
    def _shaped(batch: Any, loaded: _Loaded) -> np.ndarray:
        """Checked input of shape (N, *sample_shape), in its own dtype (a view when it can be)."""
        x = batch if type(batch) is np.ndarray else np.asarray(batch)
        if x.dtype.kind not in "iuf":
            raise InputError(f"input dtype {x.dtype} is not numeric; expected float or int values")
        shape, size = loaded.sample_shape, loaded.sample_size
        if x.ndim == len(shape) + 1 and x.shape[1:] == shape:
            return x
        if x.ndim == 2 and x.shape[1] == size:
            return x.reshape(len(x), *shape)  # flat samples
        if x.shape in (shape, (size,)):
            return x.reshape(1, *shape)  # one sample without a batch axis
        dims = ", ".join(map(str, shape))
        raise InputError(
            f"input shape {x.shape} does not fit: expected (N, {dims}) or (N, {size}), "
            f"or one sample ({dims}) or ({size},)"
        )


def bare_session(model_dir: Path | str, trusted_key: Path | str) -> ort.InferenceSession:
    """The same verified model in a plain session (what benchmarks compare Predictor against)."""
    return device_session(ModelStore(model_dir).load(load_public_key(trusted_key)).model_bytes)
