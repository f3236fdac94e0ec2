"""A round row as the training loop writes it (checkpoints refuse anything less)."""

from typing import Any


def round_row(number: int) -> dict[str, Any]:
    """Round `number`'s row with every field the checkpoint schema requires."""
    return {
        "round": number,
        "accuracy": 0.5,
        "loss": 1.0,
        "train_loss": 1.2,
        "clients_ok": 3,
        "clients_failed": [{"node_id": 7, "partition_id": 1, "reason": "timed out"}],
        "clients_rejected": [],
        "skipped": None,
        "sampled": None,
        "downlink_bytes": 10,
        "uplink_bytes": 10,
        "injected": {"byzantine": [], "dropped": [], "stragglers": []},
        "seconds": 0.5,
    }
