"""Agents as assets: each decides for its stage's records and proposes a next action."""
