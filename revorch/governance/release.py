"""Releasing the actions of a dispatcher that is gone for good.

A dispatcher marks the actions it sends ``sending`` with its journal's id (``sending_journal``,
revorch/governance/journal.py) and only a dispatcher with that journal takes them again: it
recovers its own interrupted attempts from the journal. When the journal is lost (its machine
or disk is gone), its actions would stay ``sending`` forever. :func:`release_journal` hands
them back: each becomes ``retry``, due now and claimed by no journal, so the next dispatch,
whatever its journal, judges it again under the policy in force and delivers it under the same
idempotency key (its action id); a target that got it before the journal was lost acts on it
once. Each released action is an event in the audit trail: who, which journal.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb
from filelock import FileLock, Timeout

from revorch import clock
from revorch.governance.audit import AuditEvent, audited
from revorch.governance.status import update_actions
from revorch.state.backend import retry_conflicts

# Journals holding actions in 'sending': a dispatcher at work, or one that is gone.
CLAIMS_SQL = """
SELECT sending_journal, count(*) AS actions, min(updated_at) AS since
FROM governance.actions
WHERE status = 'sending' AND sending_journal IS NOT NULL
GROUP BY sending_journal
ORDER BY since, sending_journal
"""

CLAIMED_SQL = """
SELECT action_id, action_type, entity_type, entity_id, company_id, target, attempts
FROM governance.actions
WHERE status = 'sending' AND sending_journal = $journal
ORDER BY action_id
"""

RELEASED_BEFORE_SQL = """
SELECT count(*), string_agg(DISTINCT actor, ', '), max(recorded_at)
FROM governance.audit_log
WHERE event = 'dispatch_released' AND (detail->>'journal') = $journal
"""

EVER_CLAIMED_SQL = "SELECT count(*) FROM governance.actions WHERE sending_journal = $journal"


class ReleaseError(ValueError):
    """A release that must not, or cannot, be made; nothing was changed."""


@dataclass(frozen=True)
class Claim:
    """A journal's actions left ``sending``, and the oldest mark's time."""

    journal_id: str
    actions: int
    since: datetime


@dataclass(frozen=True)
class Released:
    """What a release did: the actions it released now (none when there was nothing left),
    and what earlier releases of the same journal released, by whom, when."""

    journal_id: str
    action_ids: list[str]
    earlier: int = 0
    earlier_by: str | None = None
    earlier_at: datetime | None = None


def claims(conn: duckdb.DuckDBPyConnection) -> list[Claim]:
    """Every journal that holds actions in ``sending``, oldest first."""
    return [Claim(*row) for row in conn.execute(CLAIMS_SQL).fetchall()]


def release_journal(
    conn: duckdb.DuckDBPyConnection,
    journal_id: str,
    *,
    by: str,
    run_id: str | None,
    anchor_path: Path | None,
) -> Released:
    """Make every action journal ``journal_id`` left ``sending`` due again (``retry``, now,
    no journal), with a ``dispatch_released`` event each by ``human:<by>``, in one
    transaction. Releasing the same journal again changes nothing. Raises
    :class:`ReleaseError` for a journal that never claimed an action, or no ``by``.

    Release only a journal whose dispatcher is gone for good: a dispatcher still at work would
    fold its attempts over the next dispatcher's (see :func:`local_journal_idle`)."""
    if not by.strip():
        raise ReleaseError("say who releases the actions (--by NAME)")

    def release() -> Released:
        now = clock.now(conn)
        with audited(conn, run_id=run_id, anchor_path=anchor_path) as trail:
            cursor = conn.execute(CLAIMED_SQL, {"journal": journal_id})
            names = [column[0] for column in cursor.description]
            claimed = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
            if not claimed:
                earlier, earlier_by, earlier_at = conn.execute(
                    RELEASED_BEFORE_SQL, {"journal": journal_id}
                ).fetchone()
                if (
                    not earlier
                    and not conn.execute(EVER_CLAIMED_SQL, {"journal": journal_id}).fetchone()[0]
                ):
                    raise ReleaseError(
                        f"no action was ever claimed by dispatcher journal {journal_id!r}; "
                        "`revorch dispatch release` lists the journals holding actions"
                    )
                return Released(journal_id, [], earlier, earlier_by, earlier_at)
            why = f"released from lost dispatcher journal {journal_id} by {by}: outcome unknown"
            update_actions(
                conn,
                [
                    {
                        "action_id": action["action_id"],
                        "status": "retry",
                        "sending_journal": None,
                        "next_attempt_at": now,
                        "last_error": why,
                    }
                    for action in claimed
                ],
            )
            trail.extend(
                AuditEvent(
                    "dispatch_released",
                    f"human:{by}",
                    {
                        "journal": journal_id,
                        "action_type": action["action_type"],
                        "target": action["target"],
                        # The attempts recorded; the lost journal's last one is not among them.
                        "attempts_recorded": action["attempts"],
                        "idempotency_key": action["action_id"],
                    },
                    action_id=action["action_id"],
                    entity_type=action["entity_type"],
                    entity_id=action["entity_id"],
                    company_id=action["company_id"],
                )
                for action in claimed
            )
        return Released(journal_id, [action["action_id"] for action in claimed])

    # On DuckLake a concurrent dispatch or review makes the commit conflict: again, on the
    # newer snapshot (an action another dispatcher took meanwhile is no longer this journal's).
    return retry_conflicts(release)


def journal_id_at(path: Path) -> str | None:
    """The id of the journal file at ``path`` (None: no journal there)."""
    if not path.exists():
        return None
    try:
        with closing(sqlite3.connect(path)) as conn:
            row = conn.execute("SELECT id FROM journal").fetchone()
    except sqlite3.DatabaseError:
        return None
    return row[0] if row else None


@contextmanager
def local_journal_idle(path: Path, journal_id: str) -> Iterator[None]:
    """Refuse (:class:`ReleaseError`) to release the journal at ``path`` (this machine's)
    while its dispatcher holds its lock, or while it holds attempts not yet recorded (the next
    dispatch here recovers them); hold its lock during the block, so that no dispatcher starts
    on it meanwhile. Another journal id than the file's passes through."""
    if journal_id_at(path) != journal_id:
        yield
        return
    lock = FileLock(f"{path}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise ReleaseError(
            f"journal {journal_id} is this machine's ({path}) and its dispatcher is running "
            f"(it holds {path}.lock); it delivers or recovers these actions itself"
        ) from None
    try:
        with closing(sqlite3.connect(path)) as conn:
            unrecorded = conn.execute("SELECT count(*) FROM attempts").fetchone()[0]
        if unrecorded:
            raise ReleaseError(
                f"journal {journal_id} is this machine's ({path}) and holds {unrecorded} "
                "attempts not yet recorded; run `revorch dispatch`, which recovers them"
            )
        yield
    finally:
        lock.release()
