"""Load landing-zone batches into the change log, exactly once, quarantining bad lines.

One ingestion takes every pending batch in one DuckDB transaction:

1. stage every non-blank line of every batch as raw text;
2. parse and validate each line once (envelope, timestamps, property types);
3. classify it: ``loaded`` (new event), ``duplicate`` (event id, or identical malformed line,
   seen before) or ``quarantined`` (malformed, with its reason);
4. append to ``change_log`` / ``quarantine`` and record per-batch counts in
   ``landing_batches``, all in the same transaction.

Only after the commit are the batch files moved to the archive, so a crash at any point
leaves either nothing written (the batches are taken again) or everything written (taking
them again finds only duplicates).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import polars as pl

from revorch.landing import LandingZone, batch_id_of

DEFAULT_MAX_EVENT_BYTES = 256 * 1024
# Three ASCII separators that valid JSON never holds unescaped: each line reads as one column.
_NO_DELIMITER = "\x1e\x1f\x1d"


@dataclass(frozen=True)
class IngestResult:
    load_id: int | None
    batches: int
    received: int
    loaded: int
    duplicates: int
    quarantined: int
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    archived: list[Path] = field(default_factory=list)

    def as_metadata(self) -> dict[str, int]:
        return {
            "batches": self.batches,
            "received": self.received,
            "loaded": self.loaded,
            "duplicates": self.duplicates,
            "quarantined": self.quarantined,
        }


def property_columns(conn: duckdb.DuckDBPyConnection) -> dict[str, dict[str, str]]:
    """Typed CRM properties per object type, read from the state store's own tables."""
    rows = conn.execute(
        """
        SELECT o.object_type, c.column_name, c.data_type
        FROM object_types AS o
        JOIN information_schema.columns AS c ON c.table_name = o.table_name
        WHERE c.column_name <> 'id' AND NOT starts_with(c.column_name, '_')
        ORDER BY o.object_type, c.ordinal_position
        """
    ).fetchall()
    columns: dict[str, dict[str, str]] = {}
    for object_type, column, data_type in rows:
        columns.setdefault(object_type, {})[column] = data_type
    return columns


def ingest_pending(
    conn: duckdb.DuckDBPyConnection,
    zone: LandingZone,
    *,
    run_id: str | None = None,
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    max_batches: int | None = None,
) -> IngestResult:
    """Ingest the batches waiting in the landing zone (oldest first)."""
    files = zone.pending()[:max_batches]
    if not files:
        return IngestResult(None, 0, 0, 0, 0, 0)

    # Staging reads files into a temporary table, outside the transaction: a file DuckDB
    # cannot parse aborts only its own statement and is then read line by line.
    _stage_raw_lines(conn, files)
    conn.execute("BEGIN TRANSACTION")
    try:
        load_id = conn.execute(
            "SELECT coalesce(max(load_id), 0) + 1 FROM landing_batches"
        ).fetchone()[0]
        conn.execute(_parse_sql(property_columns(conn)), [max_event_bytes])
        conn.execute(CLASSIFY_SQL)
        conn.execute(APPEND_CHANGES_SQL, [load_id])
        conn.execute(APPEND_QUARANTINE_SQL, [load_id])
        conn.execute(
            RECORD_BATCHES_SQL,
            [
                [batch_id_of(f) for f in files],
                [f.stat().st_size for f in files],
                load_id,
                run_id,
            ],
        )
        totals = conn.execute(
            """
            SELECT count(*),
                   count(*) FILTER (WHERE outcome = 'loaded'),
                   count(*) FILTER (WHERE outcome = 'duplicate'),
                   count(*) FILTER (WHERE outcome = 'quarantined')
            FROM classified
            """
        ).fetchone()
        reasons = dict(
            conn.execute(
                "SELECT reason, count(*) FROM classified WHERE outcome = 'quarantined' "
                "GROUP BY reason ORDER BY reason"
            ).fetchall()
        )
        conn.execute("COMMIT")
    except Exception:
        conn.execute("ROLLBACK")
        raise
    finally:
        for temp in ("raw_lines", "parsed", "classified"):
            conn.execute(f"DROP TABLE IF EXISTS {temp}")

    archived = [zone.archive(f) for f in files]
    received, loaded, duplicates, quarantined = totals
    return IngestResult(
        load_id, len(files), received, loaded, duplicates, quarantined, reasons, archived
    )


def _stage_raw_lines(conn: duckdb.DuckDBPyConnection, files: list[Path]) -> None:
    """Every non-blank line as text; files DuckDB cannot read as UTF-8 go line by line."""
    conn.execute(
        "CREATE OR REPLACE TEMP TABLE raw_lines "
        "(batch_id VARCHAR, line_no BIGINT, raw VARCHAR, early_reason VARCHAR)"
    )
    try:
        _read_with_duckdb(conn, [str(f) for f in files])
        return
    except duckdb.Error:
        conn.execute("DELETE FROM raw_lines")
    for f in files:
        try:
            _read_with_duckdb(conn, [str(f)])
        except duckdb.Error:
            _read_line_by_line(conn, f)


# Longer lines make DuckDB's reader fail; the file is then read line by line in Python.
def _read_with_duckdb(conn: duckdb.DuckDBPyConnection, paths: list[str]) -> None:
    conn.execute(
        """
        INSERT INTO raw_lines
        SELECT parse_filename(filename, true) AS batch_id,
               row_number() OVER (PARTITION BY filename) AS line_no,
               raw, NULL
        FROM read_csv(?, columns = {'raw': 'VARCHAR'}, header = false, delim = ?,
                      quote = '', escape = '', filename = true, max_line_size = 16777216)
        WHERE trim(raw) <> ''
        """,
        [paths, _NO_DELIMITER],
    )


def _read_line_by_line(conn: duckdb.DuckDBPyConnection, path: Path) -> None:
    rows: dict[str, list] = {"batch_id": [], "line_no": [], "raw": [], "early_reason": []}
    for number, line in enumerate(path.read_bytes().split(b"\n"), start=1):
        line = line.rstrip(b"\r")
        if not line.strip():
            continue
        try:
            text, reason = line.decode("utf-8"), None
        except UnicodeDecodeError:
            text, reason = line.decode("utf-8", errors="backslashreplace"), "invalid_utf8"
        rows["batch_id"].append(batch_id_of(path))
        rows["line_no"].append(number)
        rows["raw"].append(text)
        rows["early_reason"].append(reason)
    conn.register(
        "lines_read_by_python",
        pl.DataFrame(
            rows,
            schema={
                "batch_id": pl.String,
                "line_no": pl.Int64,
                "raw": pl.String,
                "early_reason": pl.String,
            },
        ),
    )
    conn.execute("INSERT INTO raw_lines SELECT * FROM lines_read_by_python")
    conn.unregister("lines_read_by_python")


def _parse_sql(columns: dict[str, dict[str, str]]) -> str:
    """Parse each line once and name the first thing wrong with it (NULL when valid)."""
    typed = sorted({c for cols in columns.values() for c, t in cols.items() if t != "VARCHAR"})
    typed_struct = "{" + ",".join(f'"{c}":"VARCHAR"' for c in typed) + "}"
    type_checks = "\n".join(
        f"WHEN '{object_type}' THEN concat_ws(',', "
        + ", ".join(
            f"CASE WHEN {_cannot_hold(f'typed.{c}', t)} THEN '{c}' END"
            for c, t in cols.items()
            if t != "VARCHAR"
        )
        + ")"
        for object_type, cols in columns.items()
        if any(t != "VARCHAR" for t in cols.values())
    )
    return f"""
    CREATE OR REPLACE TEMP TABLE parsed AS
    WITH lines AS (
        SELECT batch_id, line_no, raw, early_reason,
               strlen(raw) > $1 AS oversized,
               TRY(json_type(raw, ['$', '$.event_id', '$.object_id', '$.properties'])) AS types
        FROM raw_lines
    ), envelopes AS (
        SELECT *,
               CASE WHEN types[1] = 'OBJECT' AND NOT oversized THEN json_transform(raw,
                   '{{"event_id":"VARCHAR","object_type":"VARCHAR","object_id":"VARCHAR",
                     "op":"VARCHAR","occurred_at":"VARCHAR","source":"VARCHAR",
                     "properties":"JSON"}}') END AS e
        FROM lines
    ), fields AS (
        SELECT batch_id, line_no, raw, early_reason, oversized, types,
               e.event_id, e.object_type, e.object_id, coalesce(e.op, 'upsert') AS op,
               TRY_CAST(e.occurred_at AS TIMESTAMPTZ) AS occurred_at,
               e.occurred_at AS occurred_text,
               coalesce(e.source, split_part(batch_id, '-', 1)) AS source,
               coalesce(e.properties, '{{}}'::JSON) AS properties,
               json_transform(coalesce(e.properties, '{{}}'::JSON), '{typed_struct}') AS typed
        FROM envelopes
    ), checked AS (
        SELECT *,
               CASE object_type {type_checks} END AS wrong_fields
        FROM fields
    )
    SELECT batch_id, line_no, raw, event_id, object_type, object_id, op, occurred_at,
           source, properties,
           CASE
               WHEN early_reason IS NOT NULL THEN early_reason
               WHEN oversized THEN 'oversized'
               WHEN types IS NULL THEN 'invalid_json'
               WHEN types[1] <> 'OBJECT' THEN 'not_an_object'
               WHEN coalesce(types[2], 'NULL') NOT IN ('VARCHAR', 'BIGINT', 'UBIGINT')
                    OR event_id = '' THEN 'missing_event_id'
               WHEN coalesce(types[3], 'NULL') NOT IN ('VARCHAR', 'BIGINT', 'UBIGINT')
                    OR object_id = '' THEN 'missing_object_id'
               WHEN object_type IS NULL
                    OR object_type NOT IN (SELECT object_type FROM object_types)
                    THEN 'unknown_object_type'
               WHEN op NOT IN ('upsert', 'delete') THEN 'invalid_op'
               WHEN occurred_at IS NULL THEN 'invalid_occurred_at'
               WHEN occurred_at < TIMESTAMPTZ '1990-01-01' OR occurred_at > now() + INTERVAL 1 DAY
                    THEN 'occurred_at_out_of_range'
               WHEN coalesce(types[4], 'OBJECT') <> 'OBJECT' OR wrong_fields <> ''
                    THEN 'wrong_type'
           END AS reason,
           CASE
               WHEN oversized THEN 'line of ' || strlen(raw) || ' bytes, limit ' || $1
               WHEN occurred_at IS NULL OR occurred_at < TIMESTAMPTZ '1990-01-01'
                    OR occurred_at > now() + INTERVAL 1 DAY THEN 'occurred_at: ' || occurred_text
               WHEN coalesce(types[4], 'OBJECT') <> 'OBJECT' THEN 'properties is ' || types[4]
               WHEN wrong_fields <> '' THEN 'fields: ' || wrong_fields
           END AS detail
    FROM checked
    """


def _cannot_hold(value: str, data_type: str) -> str:
    """SQL that is true when a present value cannot be stored in a column of this type."""
    refused = f"({value} IS NOT NULL AND TRY_CAST({value} AS {data_type}) IS NULL)"
    if data_type in ("BIGINT", "INTEGER"):
        # DuckDB would round "3.5" to 4; a count with a fraction is an error, not a count.
        refused += f" OR TRY_CAST({value} AS DOUBLE) <> TRY_CAST({value} AS {data_type})"
    return refused


# A valid event is loaded the first time its id is seen; a malformed line is quarantined the
# first time its exact text is seen. Every later sighting is a duplicate.
CLASSIFY_SQL = """
CREATE OR REPLACE TEMP TABLE classified AS
WITH keyed AS (
    SELECT *,
           CASE WHEN reason IS NULL THEN 'e:' || event_id ELSE 'q:' || md5(raw) END AS identity
    FROM parsed
), ranked AS (
    SELECT *,
           row_number() OVER (PARTITION BY identity ORDER BY batch_id, line_no) AS sighting
    FROM keyed
)
SELECT r.*,
       CASE
           WHEN sighting > 1 THEN 'duplicate'
           WHEN reason IS NULL AND event_id IN (SELECT event_id FROM change_log) THEN 'duplicate'
           WHEN reason IS NOT NULL AND substr(identity, 3) IN (SELECT raw_md5 FROM quarantine)
               THEN 'duplicate'
           WHEN reason IS NULL THEN 'loaded'
           ELSE 'quarantined'
       END AS outcome
FROM ranked AS r
"""

APPEND_CHANGES_SQL = """
INSERT INTO change_log
SELECT event_id, $1, batch_id, source, object_type, object_id, op, occurred_at, now(), properties
FROM classified WHERE outcome = 'loaded'
"""

APPEND_QUARANTINE_SQL = """
INSERT INTO quarantine
SELECT substr(identity, 3), $1, batch_id, event_id, reason, detail, raw, now()
FROM classified WHERE outcome = 'quarantined'
"""

RECORD_BATCHES_SQL = """
INSERT INTO landing_batches
SELECT f.batch_id, f.file_bytes, $3,
       count(c.batch_id),
       count(*) FILTER (WHERE c.outcome = 'loaded'),
       count(*) FILTER (WHERE c.outcome = 'duplicate'),
       count(*) FILTER (WHERE c.outcome = 'quarantined'),
       now(), $4
FROM (SELECT unnest($1) AS batch_id, unnest($2) AS file_bytes) AS f
LEFT JOIN classified AS c USING (batch_id)
GROUP BY f.batch_id, f.file_bytes
"""
