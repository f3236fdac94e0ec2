"""The device runtime: bundle verification and the model store (numpy, onnxruntime, cryptography only)."""
