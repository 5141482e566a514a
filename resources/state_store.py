"""The DuckDB state store as a Dagster resource."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager, nullcontext

import dagster as dg
import duckdb
import filelock
from dagster_duckdb import DuckDBResource

from revorch.clock import bind as bind_clock
from revorch.state.backend import lake_connection
from revorch.state.migrate import migrate
from revorch.stopping import interruptible, raise_if_stopping

# How dagster-duckdb configures every connection it opens. DuckDB shares one database between
# a process's connections only when their configurations match: a test or a benchmark that
# keeps a connection open while assets run in the same process opens the file with this.
CONNECTION_CONFIG = {"custom_user_agent": "dagster"}


class StateStore(DuckDBResource):
    """Dagster's DuckDB resource, with Revorch's schema migrations applied on connect.

    DuckDB lets one process write at a time. Every connection this resource hands out holds
    the writer lock (:func:`writer_lock`) until it closes, so writers from any process queue
    for the file in turn instead of failing once the connection retries run out. Hold a
    connection only for local work: a step that waits on the network reads, closes, waits,
    then writes with a new connection.
    """

    clock: str = "wall"  # what time it is for time rules: wall, data or an instant (clock.py)
    # "duckdb": the file `database`, one writer at a time. "ducklake": a DuckLake whose
    # catalog is the PostgreSQL database `catalog_dsn` and whose files are under `data_path`;
    # many writers, no writer lock, `database` unused (revorch/state/backend.py).
    backend: str = "duckdb"
    catalog_dsn: str | None = None
    data_path: str | None = None

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
            migrate(conn)
            bind_clock(conn, self.clock)
            yield conn

    def _exclusive(self):
        """The writer lock of the file; DuckLake needs none (its commits detect conflicts)."""
        return nullcontext() if self.is_lake else writer_lock(self.database)

    def _connect(self):
        if not self.is_lake:
            return super().get_connection()
        if not self.catalog_dsn or not self.data_path:
            raise ValueError("the ducklake state backend needs catalog_dsn and data_path")
        # A connection to an in-memory DuckDB that has the lake attached; it never installs
        # or autoloads an extension.
        return closing(lake_connection(self.catalog_dsn, self.data_path, CONNECTION_CONFIG))


class _WriterLock:
    """Threads of this process take ``threads`` first; the one holding it takes ``file``,
    the lock shared with other processes. Both are reentrant, so nested connections work."""

    def __init__(self, lock_path: str) -> None:
        self.threads = threading.RLock()
        # thread_local=False: the holder changes thread, and `threads` already serializes them.
        self.file = filelock.FileLock(lock_path, thread_local=False)


# Keyed by process too: a forked child must not reuse its parent's locks.
_locks: dict[tuple[int, str], _WriterLock] = {}
_locks_guard = threading.Lock()


@contextmanager
def writer_lock(database: str) -> Iterator[None]:
    """Hold the writer lock of this database file (``<database>.writer.lock`` beside it),
    shared by every thread and process that opens the file through :class:`StateStore`.
    Logs a line when it has to wait and another when it has the lock."""
    if database == ":memory:":
        yield
        return
    path = os.path.abspath(database)
    with _locks_guard:
        key = (os.getpid(), path)
        if key not in _locks:
            _locks[key] = _WriterLock(f"{path}.writer.lock")
        lock = _locks[key]
    log = dg.get_dagster_logger()
    started = time.monotonic()
    waited = not lock.threads.acquire(blocking=False)
    if waited:
        log.info(f"waiting for the DuckDB writer lock of {path} (held by another thread)")
        lock.threads.acquire()
    try:
        try:
            lock.file.acquire(timeout=0)
        except filelock.Timeout:
            waited = True
            log.info(f"waiting for the DuckDB writer lock of {path} (held by another process)")
            lock.file.acquire()
        if waited:
            log.info(f"took the DuckDB writer lock after {time.monotonic() - started:.1f} s")
        try:
            yield
        finally:
            lock.file.release()
    finally:
        lock.threads.release()
