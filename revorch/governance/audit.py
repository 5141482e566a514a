"""The audit trail: an append-only, hash-chained record of every consequential step.

Every governance step changes state and appends its events in one transaction
(``audited``), so a step that is recorded happened and a step that happened is recorded.
Each row's hash covers its content and the previous row's hash; after every commit the head
(sequence number and hash) is also appended to an anchor file outside the database. So:

- a changed row breaks its own hash;
- a removed or reordered row breaks the chain;
- a whole chain rewritten with fresh hashes no longer matches the anchors.

Nothing in Revorch updates or deletes ``governance.audit_log`` (a test reads the code to
prove it); ``verify`` finds what anyone else did.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import polars as pl

GENESIS = "0" * 64


@dataclass(frozen=True)
class AuditEvent:
    event: str  # decided, output_refused, proposed, verdict, approved, rejected, ...
    actor: str  # agent:<name>, policy:<version>, human:<name>, dispatcher, ...
    detail: dict
    action_id: str | None = None
    decision_id: str | None = None
    entity_type: str | None = None
    entity_id: str | None = None
    company_id: str | None = None


def canonical(detail: dict) -> str:
    return json.dumps(detail, sort_keys=True, separators=(",", ":"), default=str)


# A row's content digest, computed by DuckDB the same way when a row is appended and when the
# chain is verified, so verifying is one vectorised query.
DIGEST_SQL = (
    "sha256(CAST(json_array(seq, epoch_us(recorded_at), run_id, event, actor, action_id, "
    "decision_id, entity_type, entity_id, company_id, CAST(detail AS VARCHAR)) AS VARCHAR))"
)


def chain_hash(prev_hash: str, digest: str) -> str:
    """A row's hash: its content digest sealed with the previous row's hash."""
    return hashlib.sha256((prev_hash + digest).encode()).hexdigest()


def _head(conn: duckdb.DuckDBPyConnection) -> tuple[int, str]:
    row = conn.execute(
        "SELECT seq, hash FROM governance.audit_log ORDER BY seq DESC LIMIT 1"
    ).fetchone()
    return (row[0], row[1]) if row else (0, GENESIS)


def append(conn: duckdb.DuckDBPyConnection, events: list[AuditEvent], run_id: str | None) -> int:
    """Append events to the chain; call inside the transaction that made the change."""
    if not events:
        return 0
    seq, prev = _head(conn)
    recorded_at = datetime.now(UTC)
    frame = pl.DataFrame(
        [
            {
                "seq": seq + offset,
                "recorded_at": recorded_at,
                "run_id": run_id,
                "event": event.event,
                "actor": event.actor,
                "action_id": event.action_id,
                "decision_id": event.decision_id,
                "entity_type": event.entity_type,
                "entity_id": event.entity_id,
                "company_id": event.company_id,
                "detail": canonical(event.detail),
            }
            for offset, event in enumerate(events, start=1)
        ],
        schema_overrides={"recorded_at": pl.Datetime("us", "UTC"), "seq": pl.Int64},
    )
    conn.register("new_audit_rows", frame)
    digests = conn.execute(f"SELECT {DIGEST_SQL} FROM new_audit_rows ORDER BY seq").fetchall()
    prev_hashes, hashes = [], []
    for (digest,) in digests:
        prev_hashes.append(prev)
        prev = chain_hash(prev, digest)
        hashes.append(prev)
    conn.unregister("new_audit_rows")
    sealed = frame.with_columns(pl.Series("prev_hash", prev_hashes), pl.Series("hash", hashes))
    conn.register("new_audit_rows", sealed)
    conn.execute("INSERT INTO governance.audit_log BY NAME SELECT * FROM new_audit_rows")
    conn.unregister("new_audit_rows")
    return len(events)


def write_anchor(conn: duckdb.DuckDBPyConnection, anchor_path: Path) -> None:
    """Append the chain's head to the anchor file (after the commit that wrote it)."""
    seq, head = _head(conn)
    if seq == 0:
        return
    anchor_path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"seq": seq, "hash": head, "at": datetime.now(UTC).isoformat()})
    with open(anchor_path, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")


@contextmanager
def audited(
    conn: duckdb.DuckDBPyConnection, *, run_id: str | None, anchor_path: Path | None
) -> Iterator[list[AuditEvent]]:
    """One transaction for a change and its audit events: add events to the yielded list."""
    events: list[AuditEvent] = []
    conn.execute("BEGIN TRANSACTION")
    try:
        yield events
        append(conn, events, run_id)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    if events and anchor_path is not None:
        write_anchor(conn, anchor_path)


@dataclass
class Verification:
    rows: int = 0
    head_seq: int = 0
    head_hash: str = GENESIS
    anchors_checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return not self.problems

    def as_metadata(self) -> dict[str, object]:
        return {
            "audit/rows": self.rows,
            "audit/head_seq": self.head_seq,
            "audit/head_hash": self.head_hash,
            "audit/anchors_checked": self.anchors_checked,
            "audit/problems": len(self.problems),
        }


# Rows out of place, not linked to the row before, or whose content no longer matches.
BROKEN_ROWS_SQL = f"""
WITH chain AS (
    SELECT seq, row_number() OVER (ORDER BY seq) AS position, prev_hash, hash,
           lag(hash, 1, '{GENESIS}') OVER (ORDER BY seq) AS previous_row_hash,
           sha256(prev_hash || {DIGEST_SQL}) AS recomputed
    FROM governance.audit_log
)
SELECT seq, position, seq = position AS in_place, prev_hash = previous_row_hash AS linked,
       recomputed = hash AS sealed
FROM chain
WHERE seq <> position OR prev_hash <> previous_row_hash OR recomputed <> hash
ORDER BY seq
LIMIT $limit
"""


def verify(
    conn: duckdb.DuckDBPyConnection, anchor_path: Path | None, *, max_problems: int = 20
) -> Verification:
    """Recompute every row's hash and link, and compare the chain with the anchors."""
    report = Verification()
    report.rows, report.head_seq, head = conn.execute(
        "SELECT count(*), coalesce(max(seq), 0), arg_max(hash, seq) FROM governance.audit_log"
    ).fetchone()
    report.head_hash = head or GENESIS
    for seq, position, in_place, linked, sealed in conn.execute(
        BROKEN_ROWS_SQL, {"limit": max_problems}
    ).fetchall():
        if not in_place:
            report.problems.append(f"row {seq} found where row {position} should be")
        if not linked:
            report.problems.append(f"row {seq}: previous hash does not match the row before")
        if not sealed:
            report.problems.append(f"row {seq}: content does not match its hash")
    if anchor_path is None or not anchor_path.exists():
        return report
    anchors = [
        json.loads(line)
        for line in anchor_path.read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    report.anchors_checked = len(anchors)
    stored = dict(
        conn.execute(
            "SELECT seq, hash FROM governance.audit_log WHERE list_contains(?, seq)",
            [sorted({a["seq"] for a in anchors})],
        ).fetchall()
    )
    for anchor in anchors:
        found = stored.get(anchor["seq"])
        if found is None:
            report.problems.append(
                f"anchored row {anchor['seq']} is missing (the chain has {report.rows} rows)"
            )
        elif found != anchor["hash"]:
            report.problems.append(f"row {anchor['seq']} differs from its anchor")
        if len(report.problems) >= max_problems:
            break
    return report
