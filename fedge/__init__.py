"""fedge: federated edge-cloud learning with compressed, signed model redistribution."""

__version__ = "0.1.0"
