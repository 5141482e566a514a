"""Dagster assets, one folder per concern, in the order data flows."""
