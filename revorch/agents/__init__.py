"""Agents: score and propose; they never act on the outside world themselves."""
