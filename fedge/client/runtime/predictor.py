"""Predictor: serves the current verified bundle of a model store, and picks up newer ones."""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from fedge.client.runtime.session import device_session
from fedge.client.runtime.store import ModelStore
from fedge.client.runtime.verify import BundleError, VerifiedBundle, load_public_key

log = logging.getLogger("fedge.runtime")


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

    def __init__(self, bundle: VerifiedBundle, warmup: int) -> None:
        manifest = bundle.manifest
        self.model_id: str = manifest["model_id"]
        self.version: int = bundle.version
        self.sample_shape = tuple(int(d) for d in manifest["preprocessing"]["input_shape"])
        self.sample_size = math.prod(self.sample_shape)
        self.labels = np.asarray(manifest["labels"], dtype=np.int64)
        self.identity_labels = bool(np.array_equal(self.labels, np.arange(len(self.labels))))
        self.session = device_session(bundle.model_bytes)
        self.input_name = self.session.get_inputs()[0].name
        # The device contract (fedge's bundles): preprocessing inside the graph, so Python only
        # checks and casts, and probability and label outputs, so it computes nothing.
        outputs = {o.name for o in self.session.get_outputs()}
        self.output_names = [
            manifest["output"].get("probabilities"),
            manifest["output"].get("label"),
        ]
        if not manifest["preprocessing"].get("in_model") or not set(self.output_names) <= outputs:
            raise BundleError(
                "device-model",
                "the model must take raw input (preprocessing in_model) and output probabilities "
                f"and label; manifest output {manifest['output']}, model outputs {sorted(outputs)}",
            )
        zeros = np.zeros((1, *self.sample_shape), dtype=np.float32)
        for _ in range(warmup):
            self.session.run(None, {self.input_name: zeros})


class Predictor:
    """Run the model store's current bundle with onnxruntime.

    Every bundle is verified (signature, manifest, sha256) when loaded; a newer verified
    version is picked up without a restart (checked at most every `check_interval` seconds);
    a newer bundle that fails verification is refused and the current one keeps serving.
    """

    def __init__(
        self,
        model_dir: Path | str,
        trusted_key: Path | str,
        *,
        warmup: int = 50,
        check_interval: float = 1.0,
    ) -> None:
        self.store = ModelStore(model_dir)
        self.key = load_public_key(trusted_key)
        self.warmup = warmup
        self.check_interval = check_interval
        self.last_error: str | None = None  # why the latest newer bundle was refused
        self._lock = threading.Lock()
        self._loaded = _Loaded(self.store.load(self.key), warmup)
        self._next_check = time.monotonic() + check_interval

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

    def model_input(self, batch: Any) -> np.ndarray:
        """What predict feeds onnxruntime for raw samples: checked, reshaped, float32."""
        return self._model_input(batch, self._loaded)

    def reload_if_newer(self) -> bool:
        """Switch to a newer verified bundle if the store has one; True if switched."""
        with self._lock:
            self._next_check = time.monotonic() + self.check_interval
            try:
                version = self.store.current_version()
            except BundleError as err:
                self.last_error = str(err)
                return False
            if version is None or version <= self._loaded.version:
                return False
            try:
                self._loaded = _Loaded(self.store.load(self.key), self.warmup)
            except BundleError as err:
                self.last_error = f"version {version} refused: {err}"
                log.warning("keeping version %d: %s", self._loaded.version, self.last_error)
                return False
            self.last_error = None
            log.info("now serving %s version %d", self._loaded.model_id, self._loaded.version)
            return True

    def predict(self, batch: Any) -> Prediction:
        """Labels and probabilities for raw samples (the model applies the preprocessing).

        Accepts (N, *sample_shape), (N, prod(sample_shape)), or one sample without the batch
        axis; any integer or float dtype. NaN/Inf are not checked on this hot path (they give
        NaN probabilities); `fedge infer` and `fedge serve` refuse them when parsing input.
        """
        if time.monotonic() >= self._next_check:
            self.reload_if_newer()
        loaded = self._loaded
        x = self._model_input(batch, loaded)
        probabilities, best = loaded.session.run(loaded.output_names, {loaded.input_name: x})
        labels = best if loaded.identity_labels else loaded.labels[best]
        return Prediction(labels, probabilities, loaded.model_id, loaded.version)

    @staticmethod
    def _model_input(batch: Any, loaded: _Loaded) -> np.ndarray:
        """Checked, reshaped float32 input."""
        x = batch if type(batch) is np.ndarray else np.asarray(batch)
        if x.dtype.kind not in "iuf":
            raise InputError(f"input dtype {x.dtype} is not numeric; expected float or int values")
        shape = loaded.sample_shape
        if x.shape[1:] != shape:
            if x.size == loaded.sample_size and x.ndim <= len(shape):
                x = x.reshape(1, *shape)  # one sample without a batch axis
            elif x.ndim == 2 and x.shape[1] == loaded.sample_size:
                x = x.reshape(len(x), *shape)  # flat samples
            else:
                raise InputError(
                    f"input shape {x.shape} does not fit: expected (N, {', '.join(map(str, shape))})"
                    f" or (N, {loaded.sample_size})"
                )
        return x if x.dtype == np.float32 else x.astype(np.float32)


def bare_session(model_dir: Path | str, trusted_key: Path | str) -> ort.InferenceSession:
    """The same verified model in a plain session (what benchmarks compare Predictor against)."""
    return device_session(ModelStore(model_dir).load(load_public_key(trusted_key)).model_bytes)
