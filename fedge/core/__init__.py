"""Shared by server and client: data, splits, models, training, records, message types."""
