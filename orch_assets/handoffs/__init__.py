"""Handoffs that one-step automations miss: each is its own branch of the asset graph."""
