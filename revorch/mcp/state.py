"""The MCP server's two ways into the state store.

Reads open the analysts' published copy read-only, so a read never waits for a run. Writes (a
call's audit row, a proposal) take the state store's writer lock, ``<database>.writer.lock``,
the lock every writer takes (revorch/state/writer_lock.py), for one short transaction,
and give up with :class:`StateBusy` after ``busy_seconds`` rather than keep a client waiting
behind a long run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb

from revorch import clock, settings
from revorch.state import access
from revorch.state.migrate import migrate
from revorch.state.writer_lock import WriterBusy, writer_lock


class StateBusy(RuntimeError):
    """A run held the state store's writer for longer than a call may wait."""


class StateUnavailable(RuntimeError):
    """No state store (or no published copy) yet."""


@dataclass
class Store:
    database: Path
    published: Path
    anchor: Path
    clock_setting: str = clock.WALL
    busy_seconds: float = 30.0

    @classmethod
    def from_env(cls) -> Store:
        kind = LakeStore if access.is_lake() else cls
        return kind(
            database=settings.database_path(),
            published=settings.published_path(),
            anchor=settings.audit_anchor_path(),
            # REVORCH_CLOCK as the runs read it: wall (default), data or an instant.
            clock_setting=os.environ.get("REVORCH_CLOCK") or clock.WALL,
        )

    @contextmanager
    def reader(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """The published copy, read-only: what analysts see, refreshed after every run (on
        DuckLake, the live catalog: revorch/state/access.py)."""
        if not self.published.exists() and not access.is_lake():
            raise StateUnavailable(
                f"no published copy of the state store at {self.published} yet; "
                "run `revorch ingest` first"
            )
        try:
            with access.reading() as conn:
                yield conn
        except (access.NoState, access.StateBusy) as error:
            raise StateUnavailable(str(error)) from error

    @contextmanager
    def writer(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """The state store itself, holding the writer lock, for one short transaction."""
        if not self.database.exists():
            raise StateUnavailable(f"no state store at {self.database} yet; run `revorch ingest`")
        try:
            # HTTP calls run in worker threads: they queue on it like other processes.
            with (
                writer_lock(self.database, timeout=self.busy_seconds),
                duckdb.connect(str(self.database)) as conn,
            ):
                conn.execute("SET TimeZone = 'UTC'")
                migrate(conn)
                clock.bind(conn, self.clock_setting)
                yield conn
        except WriterBusy:
            raise StateBusy(
                f"a run holds the state store's writer for more than {self.busy_seconds:.0f} s; "
                "nothing was done, try again when it ends"
            ) from None


class LakeStore(Store):
    """On DuckLake: writes go to the catalog with no writer lock (DuckLake detects conflicting
    commits), so a proposal is in the approval queue the inbox reads as soon as it commits."""

    @contextmanager
    def writer(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with access.lake_writing(self.clock_setting) as conn:
            yield conn
