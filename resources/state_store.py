"""The DuckDB state store as a Dagster resource."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing, contextmanager, nullcontext
from pathlib import Path

import dagster as dg
import duckdb
from dagster_duckdb import DuckDBResource

from revorch import settings
from revorch.clock import bind as bind_clock
from revorch.state.backend import lake_connection
from revorch.state.migrate import migrate
from revorch.state.writer_lock import writer_lock
from revorch.stopping import interruptible, raise_if_stopping

# How dagster-duckdb configures every connection it opens. DuckDB shares one database between
# a process's connections only when their configurations match: a test or a benchmark that
# keeps a connection open while assets run in the same process opens the file with this.
CONNECTION_CONFIG = {"custom_user_agent": "dagster"}


class StateStore(DuckDBResource):
    """Dagster's DuckDB resource, with Revorch's schema migrations applied on connect.

    DuckDB lets one process write at a time. Every connection this resource hands out holds
    the writer lock (revorch/state/writer_lock.py) until it closes, so writers from any
    process queue for the file in turn instead of failing once the connection retries run
    out. Hold a connection only for local work: a step that waits on the network reads,
    closes, waits, then writes with a new connection.
    """

    clock: str = "wall"  # what time it is for time rules: wall, data or an instant (clock.py)
    # "duckdb": the file `database`, one writer at a time. "ducklake": a DuckLake whose
    # catalog is the PostgreSQL database `catalog_dsn` and whose files are under `data_path`;
    # many writers, no writer lock, `database` unused (revorch/state/backend.py).
    backend: str = "duckdb"
    catalog_dsn: str | None = None
    data_path: str | None = None
    # DuckDB's memory cap (``4GB``); None: settings.duckdb_memory_limit(). Past it DuckDB
    # spills to its temp directory, ``<database>.tmp`` in REVORCH_HOME for the file.
    memory_limit: str | None = None

    @classmethod
    def configured(cls, database: str | Path, **options: str) -> StateStore:
        """The store at ``database`` on the environment's backend (REVORCH_STATE_BACKEND):
        the file, or the DuckLake REVORCH_DUCKLAKE_CATALOG and REVORCH_DUCKLAKE_DATA name
        (``database`` unused there)."""
        return cls(
            database=str(database),
            backend=settings.state_backend(),
            catalog_dsn=settings.ducklake_catalog_dsn(),
            data_path=settings.ducklake_data_path(),
            **options,
        )

    @property
    def is_lake(self) -> bool:
        return self.backend == "ducklake"

    @contextmanager
    def get_connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        # closing(): Dagster's resource does not close the connection when the block raises.
        # After Ctrl-C or SIGTERM no step starts its work, and the running query is cancelled
        # (revorch/stopping.py).
        raise_if_stopping()
        with (
            self._exclusive(),
            self._connect() as conn,
            closing(conn),
            interruptible(conn),
        ):
            conn.execute("SET TimeZone = 'UTC'")
            # A setting of the database, not of the connection; SET rather than the connect
            # config so connections opened with CONNECTION_CONFIG still share the database.
            conn.execute(
                "SET memory_limit = ?", [self.memory_limit or settings.duckdb_memory_limit()]
            )
            migrate(conn)
            bind_clock(conn, self.clock)
            yield conn

    def _exclusive(self):
        """The writer lock of the file; DuckLake needs none (its commits detect conflicts)."""
        if self.is_lake:
            return nullcontext()
        # The wait lines go to the run's log.
        return writer_lock(self.database, logger=dg.get_dagster_logger())

    def _connect(self):
        if not self.is_lake:
            return super().get_connection()
        if not self.catalog_dsn or not self.data_path:
            raise ValueError("the ducklake state backend needs catalog_dsn and data_path")
        # A connection to an in-memory DuckDB that has the lake attached; it never installs
        # or autoloads an extension.
        return closing(lake_connection(self.catalog_dsn, self.data_path, CONNECTION_CONFIG))
