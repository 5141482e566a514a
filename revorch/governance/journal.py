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


# The journal's id, made once: the dispatcher marks the actions it sends with it, in the state
# store, so another dispatcher (another machine, another journal) leaves them alone.
IDENTITY = """
CREATE TABLE IF NOT EXISTS journal (id TEXT NOT NULL);
INSERT INTO journal (id) SELECT lower(hex(randomblob(16))) WHERE NOT EXISTS (SELECT 1 FROM journal);
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
        self.id: str = conn.execute("SELECT id FROM journal").fetchone()[0]

    def started(self, attempts: list[tuple[str, int]], target: str, run_id: str | None) -> None:
        """Record attempts (action id, attempt number) before any byte of them leaves."""
        now = _now()
        with self._transaction():
            self.conn.executemany(
                "INSERT OR REPLACE INTO attempts (action_id, attempt, target, run_id, started_at) "
                "VALUES (?, ?, ?, ?, ?)",
                [(action_id, n, target, run_id, now) for action_id, n in attempts],
            )

    def finished(self, outcomes: list[tuple[str, int, bool, bool, str]]) -> None:
        """Record outcomes (action id, attempt, ok, retryable, detail), before the next
        attempt begins."""
        now = _now()
        with self._transaction():
            self.conn.executemany(
                "UPDATE attempts SET finished_at = ?, ok = ?, retryable = ?, detail = ? "
                "WHERE action_id = ? AND attempt = ?",
                [(now, ok, retry, detail, a, n) for a, n, ok, retry, detail in outcomes],
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
        with self._transaction():
            self.conn.executemany(
                "DELETE FROM attempts WHERE action_id = ? AND attempt = ?",
                [(a.action_id, a.attempt) for a in attempts],
            )

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One durable commit (one fsync) for many rows."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")


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
        conn.executescript(IDENTITY)
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
