"""Stopping long work on Ctrl-C or SIGTERM within seconds, whatever it is doing.

Python runs a signal handler only between bytecodes of the main thread, so a run whose main
thread waits in a long DuckDB query would hear Ctrl-C only when the query ends. A watcher
thread sees the signal at once (through the wakeup fd, whatever handler is installed), asks
the caller's ``on_stop`` to request the stop (e.g. mark a Dagster run as canceling) and
interrupts every open DuckDB query, so the main thread gets back to Python, where the
interrupt is raised. If the work has still not ended ``grace_seconds`` later, the process
exits: every DuckDB write is a transaction, so the file keeps only what was committed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator

import duckdb

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
GRACE_SECONDS = 15.0

_open: set[duckdb.DuckDBPyConnection] = set()
_open_guard = threading.Lock()
# Set from the first stop signal until the stopped block ends.
_stopping = threading.Event()


def stopping() -> bool:
    """Whether a stop was asked for: work that is about to start should not."""
    return _stopping.is_set()


def raise_if_stopping() -> None:
    """Raise KeyboardInterrupt when a stop was asked for. Called where a step starts its work
    (a state store connection): the signal itself is raised only once, where the main thread
    was, and a step that turned it into its own error would let the next step start."""
    if _stopping.is_set():
        raise KeyboardInterrupt("stop requested")


@contextlib.contextmanager
def interruptible(conn: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """Let a stop interrupt the queries ``conn`` runs while the block lasts."""
    with _open_guard:
        _open.add(conn)
    try:
        yield conn
    except BaseException:
        # DuckDB may hand a signal back as "Query interrupted" while its threads still run
        # the query, and closing the connection would then wait for the query to finish.
        conn.interrupt()
        raise
    finally:
        with _open_guard:
            _open.discard(conn)


def interrupt_queries() -> int:
    """Interrupt the running query of every open connection; how many connections. Under the
    lock that :func:`interruptible` takes before its connection can be closed: DuckDB 1.5.5's
    ``interrupt`` takes no lock against a ``close`` on another thread."""
    with _open_guard:
        for conn in _open:
            conn.interrupt()  # DuckDB's own cross-thread cancel; a no-op when nothing runs
        return len(_open)


class Stop:
    """The signals received while :func:`stop_on_signal` is active, in order."""

    def __init__(self) -> None:
        self.signals: list[int] = []

    def __bool__(self) -> bool:
        return bool(self.signals)

    @property
    def exit_code(self) -> int:
        """128 + the first signal's number, as a shell reports a command a signal ended."""
        return 128 + self.signals[0]

    @property
    def name(self) -> str:
        return signal.Signals(self.signals[0]).name


@contextlib.contextmanager
def stop_on_signal(
    on_stop: Callable[[int], None] = lambda _: None,
    *,
    grace_seconds: float = GRACE_SECONDS,
    on_timeout: Callable[[int], None] = lambda _: None,
) -> Iterator[Stop]:
    """While the block runs, SIGTERM raises KeyboardInterrupt as Ctrl-C does (Dagster maps
    both to its own interrupt inside a run), and each stop signal calls ``on_stop(signum)``
    and interrupts DuckDB's queries from a watcher thread. After ``grace_seconds`` without
    the block ending, ``on_timeout(signum)`` is called and the process exits 128 + signum.
    Must be entered from the main thread."""
    stop = Stop()
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    ended = threading.Event()

    def watch() -> None:
        while True:
            received = reader.recv(64)
            if not received:
                return
            for number in received:
                if number == 0:  # the block ended; every signal before it is counted
                    return
                if number not in STOP_SIGNALS:
                    continue
                first = not stop
                stop.signals.append(number)
                _stopping.set()
                if first:
                    on_stop(number)
                    threading.Thread(
                        target=exit_unless_ended, args=(number,), name="stop-deadline", daemon=True
                    ).start()
                interrupt_queries()

    def exit_unless_ended(number: int) -> None:
        if ended.wait(grace_seconds):
            return
        on_timeout(number)
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(128 + number)

    previous_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    previous_term = signal.signal(signal.SIGTERM, signal.default_int_handler)
    watcher = threading.Thread(target=watch, name="stop-watcher", daemon=True)
    watcher.start()
    try:
        yield stop
    finally:
        ended.set()
        signal.set_wakeup_fd(previous_fd)
        signal.signal(signal.SIGTERM, previous_term)
        with contextlib.suppress(OSError):
            writer.send(b"\0")  # wakes the watcher, which sees ``ended``
        watcher.join(timeout=5)
        _stopping.clear()
        reader.close()
        writer.close()
