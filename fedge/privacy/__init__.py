"""Differential privacy: accounting now; DP training modes and the membership audit build on it."""
