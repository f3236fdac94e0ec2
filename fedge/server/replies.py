"""Pair sent messages with their replies: error replies made by the SuperLink carry its id."""

from __future__ import annotations

from flwr.app import Message


def replies_by_node(sent: list[Message], replies: list[Message]) -> dict[int, Message | None]:
    """Each destination node of `sent` -> its reply (matched by message id), or None if none came."""
    by_id = {msg.metadata.message_id: msg.metadata.dst_node_id for msg in sent}
    answers: dict[int, Message | None] = {msg.metadata.dst_node_id: None for msg in sent}
    for reply in replies:
        answers[by_id.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)] = reply
    return answers
