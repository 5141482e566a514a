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


def row_hash(prev_hash: str, row: dict) -> str:
    """The hash of one row: its fields in a fixed order, then the previous hash."""
    recorded_at = row["recorded_at"]
    fields = [
        row["seq"],
        int(recorded_at.timestamp() * 1_000_000),
        row["run_id"],
        row["event"],
        row["actor"],
        row["action_id"],
        row["decision_id"],
        row["entity_type"],
        row["entity_id"],
        row["company_id"],
        row["detail"],
    ]
    payload = prev_hash + json.dumps(fields, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


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
    rows = []
    for event in events:
        seq += 1
        row = {
            "seq": seq,
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
        row["prev_hash"] = prev
        row["hash"] = prev = row_hash(prev, row)
        rows.append(row)
    frame = pl.DataFrame(rows, schema_overrides={"recorded_at": pl.Datetime("us", "UTC")})
    conn.register("new_audit_rows", frame)
    conn.execute("INSERT INTO governance.audit_log BY NAME SELECT * FROM new_audit_rows")
    conn.unregister("new_audit_rows")
    return len(rows)


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


def verify(
    conn: duckdb.DuckDBPyConnection, anchor_path: Path | None, *, max_problems: int = 20
) -> Verification:
    """Recompute the chain from the first row and compare it with the anchors."""
    report = Verification()
    cursor = conn.execute(
        "SELECT seq, recorded_at, run_id, event, actor, action_id, decision_id, entity_type, "
        "entity_id, company_id, CAST(detail AS VARCHAR) AS detail, prev_hash, hash "
        "FROM governance.audit_log ORDER BY seq"
    )
    names = [column[0] for column in cursor.description]
    hashes: dict[int, str] = {}
    expected_seq, prev = 1, GENESIS
    while batch := cursor.fetchmany(50_000):
        for values in batch:
            row = dict(zip(names, values, strict=True))
            seq = row["seq"]
            if seq != expected_seq:
                report.problems.append(f"row {seq} found where row {expected_seq} should be")
            if row["prev_hash"] != prev:
                report.problems.append(f"row {seq}: previous hash does not match row {seq - 1}")
            if row_hash(row["prev_hash"], row) != row["hash"]:
                report.problems.append(f"row {seq}: content does not match its hash")
            hashes[seq] = prev = row["hash"]
            expected_seq = seq + 1
            report.rows += 1
            if len(report.problems) >= max_problems:
                return report
    report.head_seq, report.head_hash = expected_seq - 1, prev
    if anchor_path is not None and anchor_path.exists():
        for line in anchor_path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            anchor = json.loads(line)
            report.anchors_checked += 1
            found = hashes.get(anchor["seq"])
            if found is None:
                report.problems.append(
                    f"anchored row {anchor['seq']} is missing (the chain has {report.rows} rows)"
                )
            elif found != anchor["hash"]:
                report.problems.append(f"row {anchor['seq']} differs from its anchor")
            if len(report.problems) >= max_problems:
                break
    return report
