"""Compression stages (distill, prune, export, quantize, qat, minify, bundle): one config + one verb each; no flwr."""
