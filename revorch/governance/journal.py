"""The dispatch journal: every delivery attempt, written down before and after it is made.

DuckDB allows one writing process per file, so the dispatcher cannot keep it open while it
waits on a target, nor open it for every action. Instead each attempt is recorded here, in a
small SQLite file (WAL, ``synchronous=FULL``: durable at every commit), and folded into
``governance.actions`` and the audit trail in one short DuckDB transaction at the end of the
dispatch. A row with no outcome is an attempt the process died during: the next dispatch
folds it as interrupted and delivers the action again under the same idempotency key.

The journal also holds the dispatcher's lock (one dispatcher at a time per state store); the
operating system releases it when the process dies, however it dies.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from filelock import FileLock, Timeout

SCHEMA = """
CREATE TABLE IF NOT EXISTS attempts (
    action_id   TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    target      TEXT NOT NULL,
    run_id      TEXT,
    started_at  TEXT NOT NULL,
    finished_at TEXT,
    ok          INTEGER,
    retryable   INTEGER,
    detail      TEXT,
    PRIMARY KEY (action_id, attempt)
)
"""


@dataclass(frozen=True)
class Attempt:
    """One delivery attempt; ``ok`` is None while its outcome is unknown."""

    action_id: str
    attempt: int
    target: str
    run_id: str | None
    started_at: str
    finished_at: str | None
    ok: bool | None
    retryable: bool | None
    detail: str | None

    @property
    def interrupted(self) -> bool:
        return self.finished_at is None


class Journal:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def started(self, action_id: str, attempt: int, target: str, run_id: str | None) -> None:
        """Record an attempt before any byte of it leaves."""
        self.conn.execute(
            "INSERT OR REPLACE INTO attempts (action_id, attempt, target, run_id, started_at) "
            "VALUES (?, ?, ?, ?, ?)",
            [action_id, attempt, target, run_id, _now()],
        )

    def finished(
        self, action_id: str, attempt: int, *, ok: bool, retryable: bool, detail: str
    ) -> None:
        """Record the attempt's outcome, before the next attempt begins."""
        self.conn.execute(
            "UPDATE attempts SET finished_at = ?, ok = ?, retryable = ?, detail = ? "
            "WHERE action_id = ? AND attempt = ?",
            [_now(), ok, retryable, detail, action_id, attempt],
        )

    def pending(self) -> list[Attempt]:
        """Attempts not yet folded into the state store, in the order they were made."""
        rows = self.conn.execute(
            "SELECT action_id, attempt, target, run_id, started_at, finished_at, ok, retryable, "
            "detail FROM attempts ORDER BY started_at, action_id, attempt"
        ).fetchall()
        return [
            Attempt(*row[:6], _bool(row[6]), _bool(row[7]), row[8])  # type: ignore[arg-type]
            for row in rows
        ]

    def forget(self, attempts: list[Attempt]) -> None:
        """Drop attempts once the state store has committed them."""
        self.conn.executemany(
            "DELETE FROM attempts WHERE action_id = ? AND attempt = ?",
            [(a.action_id, a.attempt) for a in attempts],
        )


@contextmanager
def open_journal(path: Path, *, lock_timeout_seconds: float = 600) -> Iterator[Journal]:
    """The journal at ``path``, locked for this dispatcher until the block ends."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Autocommit (isolation_level None): every statement is its own durable transaction.
    with (
        FileLock(f"{path}.lock", timeout=lock_timeout_seconds),
        closing(sqlite3.connect(path, isolation_level=None)) as conn,
    ):
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute(SCHEMA)
        yield Journal(conn)


def interrupted_attempts(path: Path) -> list[tuple[str, int]]:
    """Attempts a dispatcher that died left in the journal, as (action id, attempt); empty
    while a dispatcher is at work (it holds the lock) or when there is no journal."""
    if not path.exists():
        return []
    try:
        with FileLock(f"{path}.lock", timeout=0), closing(sqlite3.connect(path)) as conn:
            return conn.execute(
                "SELECT action_id, attempt FROM attempts ORDER BY action_id, attempt"
            ).fetchall()
    except (Timeout, sqlite3.OperationalError):
        return []


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _bool(value: int | None) -> bool | None:
    return None if value is None else bool(value)
