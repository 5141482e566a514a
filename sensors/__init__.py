"""Sensors: the edges where the outside world starts runs."""
