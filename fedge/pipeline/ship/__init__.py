"""Choosing and shipping: candidates, the choice, search, tiers, gates, the compression phase."""
