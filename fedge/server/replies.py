"""Which node a reply answers for: error replies made by the SuperLink carry its id, not the node's."""

from __future__ import annotations

from flwr.app import Message


def reply_origins(sent: list[Message], replies: list[Message]) -> list[int]:
    """The destination node of the message each reply answers (matched by message id)."""
    by_id = {msg.metadata.message_id: msg.metadata.dst_node_id for msg in sent}
    return [by_id.get(r.metadata.reply_to_message_id, r.metadata.src_node_id) for r in replies]
