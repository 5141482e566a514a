"""The DuckDB state store as a Dagster resource."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import duckdb
from dagster_duckdb import DuckDBResource

from revorch.clock import bind as bind_clock
from revorch.state.migrate import migrate


class StateStore(DuckDBResource):
    """Dagster's DuckDB resource, with Revorch's schema migrations applied on connect.

    DuckDB lets one process write at a time; the resource retries while another process
    holds the file, and every writing asset runs in the ``duckdb_writer`` concurrency pool.
    """

    clock: str = "wall"  # what time it is for time rules: wall, data or an instant (clock.py)

    @contextmanager
    def get_connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with super().get_connection() as conn:
            conn.execute("SET TimeZone = 'UTC'")
            migrate(conn)
            bind_clock(conn, self.clock)
            yield conn
