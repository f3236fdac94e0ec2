"""Compression stages (distill, prune, export, quantize, bundle): one config + one verb each; no flwr."""
