"""The one way readers outside a run open the state store, on either backend.

The CLI's queries (``revorch sql``, ``report``, ``history``, ``audit verify``...), the
approvals inbox, the approvals sensor and the MCP server read through :func:`reading`:

- on the embedded file, the analysts' published copy (it can be read while a run writes);
  ``working=True`` asks for the working file itself, and ``or_working=True`` takes it when
  there is no copy yet: a run writing it keeps it closed to others (:class:`StateBusy`), and
  a reader holding it open keeps runs out, so pollers (the inbox, a sensor) read the copy only;
- on DuckLake, the live catalog, attached read-only: every read sees the last commit, and
  there is no copy to wait for.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing, contextmanager

import duckdb

from revorch import clock, settings
from revorch.state.backend import lake_connection
from revorch.state.migrate import migrate


class NoState(RuntimeError):
    """No state store (or, on the file, no copy of it) to read yet."""


class StateBusy(RuntimeError):
    """A run has the embedded file open for writing; it cannot be opened until it ends."""


def is_lake() -> bool:
    """Whether the environment puts the state on DuckLake (``REVORCH_STATE_BACKEND``)."""
    return settings.state_backend() == "ducklake"


def source() -> str:
    """Where :func:`reading` reads, in words (for messages and report footers)."""
    if is_lake():
        return f"the DuckLake catalog ({settings.ducklake_data_path()})"
    published = settings.published_path()
    return str(published if published.exists() else settings.database_path())


@contextmanager
def reading(
    *, working: bool = False, or_working: bool = False
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection that reads the state store and cannot write it (see the module
    docstring); its time zone is UTC."""
    if is_lake():
        catalog = settings.ducklake_catalog_dsn()
        assert catalog is not None  # state_backend() refuses ducklake without one
        try:
            conn = lake_connection(catalog, settings.ducklake_data_path(), {}, read_only=True)
        except duckdb.Error as error:
            first_line = str(error).splitlines()[0]
            raise NoState(f"cannot read the DuckLake catalog: {first_line}") from error
        with closing(conn):
            conn.execute("SET TimeZone = 'UTC'")
            yield conn
        return
    database = settings.database_path()
    published = settings.published_path()
    path = database if working or (or_working and not published.exists()) else published
    if not path.exists():
        raise NoState(
            f"no state store at {path} yet; run `revorch quickstart` (simulated data) "
            "or `revorch import FILE` then `revorch ingest` first"
        )
    try:
        conn = duckdb.connect(str(path), read_only=True)
    except duckdb.IOException as error:
        raise StateBusy("a run is writing the state store; try again when it ends") from error
    with conn:
        conn.execute("SET TimeZone = 'UTC'")
        yield conn


@contextmanager
def lake_writing(clock_setting: str = clock.WALL) -> Iterator[duckdb.DuckDBPyConnection]:
    """Outside a run, on DuckLake: a migrated connection for one short transaction. Writers
    need no lock there; a commit that conflicts with a concurrent one fails
    (``backend.retry_conflicts`` runs it again)."""
    catalog = settings.ducklake_catalog_dsn()
    assert catalog is not None and is_lake()
    with closing(lake_connection(catalog, settings.ducklake_data_path(), {})) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        migrate(conn)
        clock.bind(conn, clock_setting)
        yield conn
