"""The one clock every time rule reads: SLA breaches, renewal windows, approval SLAs, retries.

A time rule fires on the absence of an event (no first touch before the SLA ran out), so it
must read a clock that moves when nothing arrives. Which clock is configuration
(``REVORCH_CLOCK``, the ``clock`` field of the state store resource):

- ``wall`` (the default): the wall clock, for production (never behind the newest change
  received, which ingestion accepts up to a day ahead).
- ``data``: the newest change received (``data_clock()``), for replaying history: the same
  change log gives the same answer whenever it is replayed.
- an ISO 8601 instant with a time zone (``2026-03-01T09:00:00Z``): a fixed moment, for
  tests, replays and backtests.

The choice is set on each state-store connection (``bind``) and read in SQL through the
``clock_now()`` macro (migration 0006) and in Python through ``now(conn)``, which asks that
same macro: one place decides what time it is. A connection that was not bound reads the
wall clock. Records of when something happened (``received_at``, ``updated_at``, the audit
trail's ``recorded_at``) keep the wall clock; they are not rules.
"""

from __future__ import annotations

from datetime import datetime

import duckdb

WALL = "wall"
DATA = "data"
VARIABLE = "revorch_clock"


class ClockError(ValueError):
    """A clock setting that is neither ``wall``, ``data`` nor an instant with a time zone."""


def parse(setting: str) -> str:
    """The clock setting in its normal form; raise ``ClockError`` if it names no clock."""
    value = (setting or WALL).strip()
    if value.lower() in (WALL, DATA):
        return value.lower()
    try:
        instant = datetime.fromisoformat(value)
    except ValueError:
        instant = None
    if instant is None or instant.tzinfo is None:
        raise ClockError(
            f"clock must be 'wall', 'data' or an ISO 8601 instant with a time zone "
            f"(2026-03-01T09:00:00Z), not {setting!r}"
        )
    return instant.isoformat()


def bind(conn: duckdb.DuckDBPyConnection, setting: str) -> None:
    """Make ``clock_now()`` on this connection read the clock ``setting`` names."""
    conn.execute(f"SET VARIABLE {VARIABLE} = ?", [parse(setting)])


def now(conn: duckdb.DuckDBPyConnection) -> datetime:
    """What time it is for the time rules run on this connection (see the module docstring)."""
    return conn.execute("SELECT clock_now()").fetchone()[0]
