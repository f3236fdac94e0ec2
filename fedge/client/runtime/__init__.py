"""The device runtime: bundle verification, the model store, inference and serving (no torch)."""

from fedge.client.runtime.predictor import InputError, Prediction, Predictor

__all__ = ["InputError", "Prediction", "Predictor"]
