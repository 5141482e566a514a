"""The writer lock of the embedded state store: one writer at a time, across threads and processes.

DuckDB lets one process open a file read-write, and another process that tries fails. Every
writer (the Dagster resource, the MCP server) holds ``<database>.writer.lock`` beside the file
while its connection is open, so writers queue for the file instead of failing.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import filelock

log = logging.getLogger(__name__)


class WriterBusy(TimeoutError):
    """Another thread or process held the writer lock for longer than the caller would wait."""


def lock_path(database: str | Path) -> str:
    """The lock file of a database file."""
    return f"{os.path.abspath(database)}.writer.lock"


class _WriterLock:
    """Threads of this process take ``threads`` first; the one holding it takes ``file``,
    the lock shared with other processes. Both are reentrant, so nested connections work."""

    def __init__(self, path: str) -> None:
        self.threads = threading.RLock()
        # thread_local=False: the holder changes thread, and `threads` already serializes them.
        self.file = filelock.FileLock(path, thread_local=False)


# Keyed by process too: a forked child must not reuse its parent's locks.
_locks: dict[tuple[int, str], _WriterLock] = {}
_locks_guard = threading.Lock()


@contextmanager
def writer_lock(
    database: str | Path,
    *,
    timeout: float | None = None,
    logger: logging.Logger | None = None,
) -> Iterator[None]:
    """Hold the writer lock of this database file, waiting at most ``timeout`` seconds (None:
    as long as it takes) and raising :class:`WriterBusy` after that. Logs a line on ``logger``
    when it has to wait and another when it has the lock."""
    if str(database) == ":memory:":
        yield
        return
    path = os.path.abspath(database)
    with _locks_guard:
        key = (os.getpid(), path)
        if key not in _locks:
            _locks[key] = _WriterLock(lock_path(path))
        lock = _locks[key]
    logger = logger or log
    started = time.monotonic()

    def left() -> float:
        return -1 if timeout is None else max(0.0, timeout - (time.monotonic() - started))

    def busy() -> WriterBusy:
        return WriterBusy(f"the DuckDB writer lock of {path} stayed held for {timeout:.0f} s")

    waited = not lock.threads.acquire(blocking=False)
    if waited:
        logger.info(f"waiting for the DuckDB writer lock of {path} (held by another thread)")
        if not lock.threads.acquire(timeout=left()):
            raise busy()
    try:
        try:
            lock.file.acquire(timeout=0)
        except filelock.Timeout:
            waited = True
            logger.info(f"waiting for the DuckDB writer lock of {path} (held by another process)")
            try:
                lock.file.acquire(timeout=left())
            except filelock.Timeout:
                raise busy() from None
        if waited:
            logger.info(f"took the DuckDB writer lock after {time.monotonic() - started:.1f} s")
        try:
            yield
        finally:
            lock.file.release()
    finally:
        lock.threads.release()
