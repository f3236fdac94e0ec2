"""The Open Inference Protocol (KServe v2 REST) over a Predictor: routes, metadata, tensors."""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from fedge.client.runtime.inputs import to_samples
from fedge.client.runtime.predictor import InputError, Prediction, Predictor

V2_ROUTE = re.compile(
    r"/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?(?:/(?P<action>ready|infer))?"
)
PLATFORM = "onnxruntime_onnx"


def metadata(predictor: Predictor) -> dict[str, Any]:
    """GET /v2/models/{name}: the model's name, version, input and outputs."""
    probabilities, label = predictor.output_names
    return {
        "name": predictor.model_id,
        "versions": [str(predictor.version)],
        "platform": PLATFORM,
        "inputs": [
            {
                "name": predictor.input_name,
                "datatype": "FP32",
                "shape": [-1, *predictor.sample_shape],
            }
        ],
        "outputs": [
            {"name": probabilities, "datatype": "FP32", "shape": [-1, predictor.num_classes]},
            {"name": label, "datatype": "INT64", "shape": [-1]},
        ],
    }


def infer_request(request: Any, predictor: Predictor) -> tuple[np.ndarray, list[str]]:
    """The input tensor of a v2 inference request, and the output names it asks for.

    Parameters
    ----------
    request
        The parsed JSON body: {"inputs": [{"name", "shape", "datatype": "FP32", "data"}],
        "outputs": [{"name"}] (optional), "id" (optional)}. Numbers arrive as floats.
    predictor
        The model the request is for.

    """
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise InputError('request body must be {"inputs": [{"name", "shape", "datatype", "data"}]}')
    inputs = request["inputs"]
    if len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InputError(f"the model takes one input tensor, {predictor.input_name!r}")
    tensor = inputs[0]
    if tensor.get("name") != predictor.input_name:
        raise InputError(f"input {str(tensor.get('name'))[:60]!r} is not {predictor.input_name!r}")
    if tensor.get("datatype") != "FP32":
        raise InputError(f"datatype {str(tensor.get('datatype'))[:20]!r} is not 'FP32'")
    shape = tensor.get("shape")
    if (
        not isinstance(shape, list)
        or not 1 <= len(shape) <= 9
        or not all(isinstance(d, float) and d.is_integer() and 0 <= d < 2**31 for d in shape)
    ):
        raise InputError("shape must be a list of 1 to 9 non-negative integers")
    dims = [int(d) for d in shape]
    sample = list(predictor.sample_shape)
    if dims[1:] not in (sample, [math.prod(sample)]):
        raise InputError(
            f"shape {dims} does not fit: expected [N, {', '.join(map(str, sample))}] or "
            f"[N, {math.prod(sample)}] (N samples; the batch axis comes first)"
        )
    data = to_samples(tensor.get("data"), "input data")
    if data.size != math.prod(dims):
        raise InputError(f"data has {data.size} values, shape {dims} needs {math.prod(dims)}")
    return data.reshape(dims), _wanted(request.get("outputs"), predictor)


def v2_response(
    prediction: Prediction, predictor: Predictor, request: dict[str, Any], wanted: list[str]
) -> dict[str, Any]:
    """The v2 inference response: probabilities (FP32, [N, classes]) and label (INT64, [N])."""
    probabilities, label = predictor.output_names
    n = len(prediction.labels)
    tensors = {
        probabilities: {
            "name": probabilities,
            "datatype": "FP32",
            "shape": [n, prediction.probabilities.shape[1]],
            "data": prediction.probabilities.round(6).ravel().tolist(),
        },
        label: {
            "name": label,
            "datatype": "INT64",
            "shape": [n],
            "data": prediction.labels.tolist(),
        },
    }
    response: dict[str, Any] = {
        "model_name": prediction.model_id,
        "model_version": str(prediction.version),
        "outputs": [tensors[name] for name in wanted],
    }
    if isinstance(request.get("id"), str):
        response["id"] = request["id"][:200]
    return response


def _wanted(outputs: Any, predictor: Predictor) -> list[str]:
    names = list(predictor.output_names)
    if outputs is None or outputs == []:  # none named: every output (as Triton answers)
        return names
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise InputError('outputs must be a list of {"name": ...}')
    wanted = [o.get("name") for o in outputs]
    unknown = [w for w in wanted if w not in names]
    if unknown:
        raise InputError(f"unknown outputs {str(unknown)[:80]}; the model has {names}")
    if len(set(wanted)) < len(wanted):
        raise InputError(f"outputs must name each wanted output once; the model has {names}")
    return [str(w) for w in wanted]
