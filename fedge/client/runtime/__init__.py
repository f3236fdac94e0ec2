"""The device runtime: bundle verification and the model store (numpy, onnxruntime, cryptography only)."""

from fedge.client.runtime.predictor import InputError, Prediction, Predictor

__all__ = ["InputError", "Prediction", "Predictor"]
