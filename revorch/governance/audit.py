"""The audit trail: an append-only, hash-chained record of every consequential step.

Every governance step changes state and appends its events in one transaction
(``audited``), so a step that is recorded happened and a step that happened is recorded.
Each row's hash covers its content and the previous row's hash; after every commit the head
(sequence number and hash) is also appended to an anchor file outside the database, and each
run's head is kept in the Dagster instance (the ``audit_trail`` asset's materializations),
which the database's writer does not rewrite. So:

- a changed row breaks its own hash;
- a removed or reordered row breaks the chain;
- a whole chain rewritten with fresh hashes no longer matches the anchors;
- rows appended after the last anchor (a forged tail with a consistent chain) are unanchored:
  ``verify`` reports them, and the trail is not intact until an anchor covers them;
- a missing anchor file, or no anchor at all for a trail that has rows, is an error.

Nothing in Revorch updates or deletes ``governance.audit_log`` (a test reads the code to
prove it); ``verify`` finds what anyone else did.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import polars as pl

from revorch.state.backend import claim
from revorch.state.migrate import rollback

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
    # Built column by column: a frame from a dict per event costs several times more.
    columns = (
        "event",
        "actor",
        "action_id",
        "decision_id",
        "entity_type",
        "entity_id",
        "company_id",
    )
    frame = pl.DataFrame(
        {
            "seq": range(seq + 1, seq + 1 + len(events)),
            "recorded_at": [recorded_at] * len(events),
            "run_id": [run_id] * len(events),
            **{column: [getattr(e, column) for e in events] for column in columns},
            "detail": [canonical(e.detail) for e in events],
        },
        schema={
            "seq": pl.Int64,
            "recorded_at": pl.Datetime("us", "UTC"),
            "run_id": pl.String,
            **dict.fromkeys(columns, pl.String),
            "detail": pl.String,
        },
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


def last_anchored_seq(anchor_path: Path) -> int:
    """The row the anchor file's last line anchors (0 if none); reads only the file's end."""
    if not anchor_path.exists():
        return 0
    with open(anchor_path, "rb") as handle:
        size = handle.seek(0, 2)
        handle.seek(max(0, size - 4096))
        lines = [line for line in handle.read().splitlines() if line.strip()]
    try:
        return int(json.loads(lines[-1])["seq"]) if lines else 0
    except (ValueError, KeyError, TypeError):
        return 0


def _unanchored_rows_found(conn: duckdb.DuckDBPyConnection, anchor_path: Path) -> list[AuditEvent]:
    """Rows after the last anchor when a write starts: appended outside Revorch, or left by a
    crash between a commit and its anchor. This write anchors them, so say so in the trail."""
    seq, _ = _head(conn)
    anchored = last_anchored_seq(anchor_path)
    if seq <= anchored:
        return []
    return [
        AuditEvent(
            "unanchored_rows_found",
            "audit",
            {"from_seq": anchored + 1, "to_seq": seq, "anchor": str(anchor_path)},
        )
    ]


# Slices a step that works through millions of actions commits together (Trail.commit): a
# first run's proposals in one transaction held them all in memory (23.8 GB after 6.3M
# actions at 10M contacts; bench/README.md).
SLICES_PER_TRANSACTION = 10


class Trail(list):
    """The events of one audited transaction. ``flush`` appends those gathered so far to the
    chain (in the transaction) and forgets them, so a step that works through many actions
    in slices holds one slice's events, not all of them; ``audited`` appends the rest when
    the block ends. The chain is the same whether a step flushes or not."""

    def __init__(
        self, conn: duckdb.DuckDBPyConnection, run_id: str | None, anchor_path: Path | None
    ) -> None:
        super().__init__()
        self.conn = conn
        self.run_id = run_id
        self.anchor_path = anchor_path
        self.appended = 0

    def flush(self) -> None:
        if not self:
            return
        if not self.appended:
            # Two writers appending at once on DuckLake would both link to the same head:
            # the claim makes the later commit conflict and roll back instead of forking.
            claim(self.conn, "audit_log")
        self.appended += append(self.conn, list(self), self.run_id)
        self.clear()

    def commit(self) -> None:
        """Commit what the transaction holds so far, anchor it, and begin the next one: a
        change of millions of rows in one transaction holds them all in memory (DuckDB keeps
        a transaction's uncommitted rows outside its memory limit; bench/README.md)."""
        self.flush()
        self.conn.execute("COMMIT")
        if self.appended and self.anchor_path is not None:
            write_anchor(self.conn, self.anchor_path)
        self.appended = 0
        self.conn.execute("BEGIN TRANSACTION")


@contextmanager
def audited(
    conn: duckdb.DuckDBPyConnection, *, run_id: str | None, anchor_path: Path | None
) -> Iterator[Trail]:
    """One transaction for a change and its audit events: add events to the yielded trail
    (``flush`` it between slices of a large change; ``commit`` it to end the transaction
    there and begin the next, for a change too large for one)."""
    conn.execute("BEGIN TRANSACTION")
    try:
        trail = Trail(conn, run_id, anchor_path)
        # Found before the change: in this transaction only this trail appends to the chain.
        if anchor_path is not None:
            trail.extend(_unanchored_rows_found(conn, anchor_path))
        yield trail
        trail.flush()
        conn.execute("COMMIT")
    except BaseException:
        rollback(conn)
        raise
    if trail.appended and anchor_path is not None:
        write_anchor(conn, anchor_path)


@dataclass(frozen=True)
class Anchor:
    """A head of the chain recorded outside the database: row ``seq`` had hash ``hash``."""

    seq: int
    hash: str
    where: str  # the anchor file, or the Dagster run that recorded it


def file_anchors(anchor_path: Path) -> list[Anchor] | None:
    """The anchors of the file, or None if there is no file."""
    if not anchor_path.exists():
        return None
    lines = anchor_path.read_text(encoding="utf-8").splitlines()
    return [
        Anchor(a["seq"], a["hash"], str(anchor_path))
        for a in (json.loads(line) for line in lines if line.strip())
    ]


@dataclass
class Verification:
    rows: int = 0
    head_seq: int = 0
    head_hash: str = GENESIS
    anchors_checked: int = 0
    anchored_seq: int = 0  # the last row every anchor source covers
    verified_from: int = 0  # rows up to this one were verified before (0: the whole chain)
    verified: Anchor | None = None  # intact up to this anchor: where the next check can start
    problems: list[str] = field(default_factory=list)
    # Rows a write found after the last anchor, and anchored (recorded in the trail).
    notices: list[str] = field(default_factory=list)

    @property
    def unanchored(self) -> int:
        """Rows after the last anchor: not proven, whatever their chain says."""
        return self.head_seq - self.anchored_seq

    @property
    def intact(self) -> bool:
        return not self.problems and self.unanchored == 0

    def as_metadata(self) -> dict[str, object]:
        return {
            "audit/rows": self.rows,
            "audit/head_seq": self.head_seq,
            "audit/head_hash": self.head_hash,
            "audit/anchors_checked": self.anchors_checked,
            "audit/anchored_seq": self.anchored_seq,
            "audit/verified_from_seq": self.verified_from,
            "audit/unanchored_rows": self.unanchored,
            "audit/problems": len(self.problems),
        }

    def summary(self) -> list[str]:
        """What is wrong, one line each: tampering, then the unanchored tail."""
        lines = list(self.problems)
        if self.unanchored > 0:
            lines.append(
                f"rows {self.anchored_seq + 1}-{self.head_seq} are unanchored: appended after "
                "the last anchor, so nothing outside the database vouches for them (a forged "
                "tail looks like this; the next run's anchor covers rows Revorch wrote)"
            )
        return lines


# Rows out of place, not linked to the row before, or whose content no longer matches, among
# the rows after row $after up to row $until: one range of the chain. $position is the number
# of rows before the range (where its first row should be), $after_hash the hash of the row
# before it. The rows are in seq order on disk, so DuckDB skips the row groups outside it.
BROKEN_ROWS_SQL = f"""
WITH chain AS (
    SELECT seq, $position + row_number() OVER (ORDER BY seq) AS position, prev_hash, hash,
           lag(hash, 1, $after_hash) OVER (ORDER BY seq) AS previous_row_hash,
           sha256(prev_hash || {DIGEST_SQL}) AS recomputed
    FROM governance.audit_log
    WHERE seq > $after AND seq <= $until
)
SELECT seq, position, seq = position AS in_place, prev_hash = previous_row_hash AS linked,
       recomputed = hash AS sealed
FROM chain
WHERE seq <> position OR prev_hash <> previous_row_hash OR recomputed <> hash
ORDER BY seq
LIMIT $limit
"""

# Rows verified per query. A first run's whole trail in one query (about 40M rows at ten
# million contacts) sorted every row's content at once and spilled past 17 GB
# (bench/README.md); a range of rows is verified with the last hash of the range before it.
ROWS_PER_RANGE = 1_000_000


def _broken_rows(
    conn: duckdb.DuckDBPyConnection,
    start: int,
    start_hash: str,
    limit: int,
    rows_per_range: int,
    progress: Callable[[int], None] | None = None,
) -> list[tuple[int, int, bool, bool, bool]]:
    """The broken rows after row ``start`` (whose hash was ``start_hash``), range by range,
    each range linked to the last row of the one before; at most ``limit`` of them.
    ``progress`` is called after each range with the rows verified so far."""
    broken: list[tuple[int, int, bool, bool, bool]] = []
    after, position, after_hash = start, start, start_hash
    while len(broken) < limit:
        # From the next row there is, so a row with a far-off seq does not mean a long walk.
        (first,) = conn.execute(
            "SELECT min(seq) FROM governance.audit_log WHERE seq > ?", [after]
        ).fetchone()
        if first is None:
            break
        until = first + rows_per_range - 1
        bounds = {"after": after, "until": until}
        broken += conn.execute(
            BROKEN_ROWS_SQL,
            {
                **bounds,
                "position": position,
                "after_hash": after_hash,
                "limit": limit - len(broken),
            },
        ).fetchall()
        rows, last_hash = conn.execute(
            "SELECT count(*), arg_max(hash, seq) FROM governance.audit_log "
            "WHERE seq > $after AND seq <= $until",
            bounds,
        ).fetchone()
        after, position, after_hash = until, position + rows, last_hash
        if progress is not None:
            progress(position - start)
    return broken


def checkpoint_path(anchor_path: Path) -> Path:
    """Where the last verified anchor is kept: beside the anchor file, outside the database."""
    return anchor_path.with_name(f"{anchor_path.name}.verified")


def read_checkpoint(anchor_path: Path | None) -> Anchor | None:
    """The last anchor a verification found intact up to (None if there is none yet)."""
    if anchor_path is None or not checkpoint_path(anchor_path).exists():
        return None
    path = checkpoint_path(anchor_path)
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
        return Anchor(int(found["seq"]), str(found["hash"]), str(path))
    except (ValueError, KeyError, TypeError):
        return None  # unreadable: the next check verifies the whole chain


def write_checkpoint(anchor_path: Path, report: Verification) -> None:
    """Record ``report.verified`` (when there is one) for the next incremental check."""
    if report.verified is None:
        return
    path = checkpoint_path(anchor_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.partial")
    line = {"seq": report.verified.seq, "hash": report.verified.hash}
    partial.write_text(json.dumps({**line, "at": datetime.now(UTC).isoformat()}) + "\n")
    os.replace(partial, path)  # whole or not at all


def verify(
    conn: duckdb.DuckDBPyConnection,
    anchor_path: Path | None,
    *,
    dagster_anchors: list[Anchor] | None = None,
    max_problems: int = 20,
    since: Anchor | None = None,
    rows_per_range: int = ROWS_PER_RANGE,
    progress: Callable[[int, int], None] | None = None,
) -> Verification:
    """Recompute every row's hash and link, and compare the chain with the anchors: those of
    ``anchor_path`` and, when given, those recorded in the Dagster instance. Each source must
    exist and match; rows after the last anchor of any source are unanchored.

    ``since`` (the last verified anchor, :func:`read_checkpoint`) makes it incremental: when
    that row still has that hash, the rows before it still number ``since.seq`` and every
    anchor source still holds it, only the rows and anchors after it are checked. Otherwise
    the whole chain is. ``report.verified`` is the anchor to start from next time.

    The rows are recomputed ``rows_per_range`` at a time, each range linked to the last hash
    of the one before, so memory does not grow with the trail. ``progress`` is called after
    each range with the rows recomputed so far and the rows to recompute."""
    report = Verification()
    report.rows = conn.execute("SELECT count(*) FROM governance.audit_log").fetchone()[0]
    report.head_seq, report.head_hash = _head(conn)
    sources = _sources(anchor_path, dagster_anchors, report)
    after = since if since is not None and _still_holds(conn, since, sources) else None
    if after is not None:
        report.verified_from = after.seq
    start, start_hash = (after.seq, after.hash) if after else (0, GENESIS)
    to_verify = report.rows - start  # _still_holds counted the rows up to row start
    done = None if progress is None else (lambda rows: progress(rows, to_verify))
    for seq, position, in_place, linked, sealed in _broken_rows(
        conn, start, start_hash, max_problems, rows_per_range, done
    ):
        if not in_place:
            report.problems.append(f"row {seq} found where row {position} should be")
        if not linked:
            report.problems.append(f"row {seq}: previous hash does not match the row before")
        if not sealed:
            report.problems.append(f"row {seq}: content does not match its hash")
    for recorded_at, run_id, found in conn.execute(
        "SELECT recorded_at, run_id, detail FROM governance.audit_log "
        f"WHERE seq > {int(start)} AND event = 'unanchored_rows_found' ORDER BY seq"
    ).fetchall():
        found = json.loads(found)
        report.notices.append(
            f"rows {found['from_seq']}-{found['to_seq']} had no anchor when run {run_id} wrote "
            f"at {recorded_at:%Y-%m-%d %H:%M:%S}: appended outside Revorch, or a crash cut "
            "off their anchor; read them"
        )
    if not sources:
        return report  # no anchor (asked for, or found): every row is unanchored
    anchored = []
    for name, anchors in sources:
        if not anchors and report.rows:
            report.problems.append(f"{name} holds no anchor for a trail of {report.rows} rows")
        anchored.append(max((a.seq for a in anchors), default=0))
        _match(conn, [a for a in anchors if a.seq >= start], report, max_problems)
    report.anchored_seq = min(min(anchored), report.head_seq)
    if not report.problems and report.anchored_seq > 0:
        verified_hash = conn.execute(
            "SELECT hash FROM governance.audit_log WHERE seq = ?", [report.anchored_seq]
        ).fetchone()[0]
        report.verified = Anchor(report.anchored_seq, verified_hash, "verified")
    return report


def _sources(
    anchor_path: Path | None, dagster_anchors: list[Anchor] | None, report: Verification
) -> list[tuple[str, list[Anchor]]]:
    """The anchor sources to match: the file (its absence is a problem) and the instance's."""
    sources: list[tuple[str, list[Anchor]]] = []
    if anchor_path is not None:
        in_file = file_anchors(anchor_path)
        if in_file is None and report.rows:
            report.problems.append(f"the anchor file {anchor_path} is missing")
        elif in_file is not None:
            sources.append((f"the anchor file {anchor_path}", in_file))
    if dagster_anchors is not None:
        sources.append(("the Dagster instance", dagster_anchors))
    return sources


def _still_holds(
    conn: duckdb.DuckDBPyConnection, since: Anchor, sources: list[tuple[str, list[Anchor]]]
) -> bool:
    """Whether the chain up to ``since`` is still the one verified: that row has that hash,
    there are exactly ``since.seq`` rows up to it, and every anchor source holds it."""
    if not sources or any(
        not any(a.seq == since.seq and a.hash == since.hash for a in anchors)
        for _, anchors in sources
    ):
        return False
    rows, found = conn.execute(
        "SELECT count(*), any_value(hash) FILTER (WHERE seq = $seq) "
        "FROM governance.audit_log WHERE seq <= $seq",
        {"seq": since.seq},
    ).fetchone()
    return rows == since.seq and found == since.hash


def _match(
    conn: duckdb.DuckDBPyConnection, anchors: list[Anchor], report: Verification, limit: int
) -> None:
    report.anchors_checked += len(anchors)
    stored = dict(
        conn.execute(
            "SELECT seq, hash FROM governance.audit_log WHERE seq IN (SELECT unnest(?))",
            [sorted({a.seq for a in anchors})],
        ).fetchall()
    )
    for anchor in anchors:
        if len(report.problems) >= limit:
            break
        found = stored.get(anchor.seq)
        if found is None:
            report.problems.append(
                f"anchored row {anchor.seq} is missing (the chain has {report.rows} rows; "
                f"anchor in {anchor.where})"
            )
        elif found != anchor.hash:
            report.problems.append(f"row {anchor.seq} differs from its anchor in {anchor.where}")
