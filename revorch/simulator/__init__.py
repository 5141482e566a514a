"""A seeded B2B CRM simulator that feeds the landing zone (docs/landing_zone.md).

``simulate_history`` writes a reproducible history (owners, companies, contacts, activities,
deals, subscriptions, tickets) as batches, optionally with malformed lines, duplicates and a
re-delivered batch; ``stream_live`` then trickles new changes stamped with the wall clock;
``history_frame`` returns the history's lines without writing files.
"""

from revorch.simulator.config import SimulationConfig
from revorch.simulator.history import SimulationSummary, history_frame, simulate_history
from revorch.simulator.stream import stream_live

__all__ = [
    "SimulationConfig",
    "SimulationSummary",
    "history_frame",
    "simulate_history",
    "stream_live",
]
