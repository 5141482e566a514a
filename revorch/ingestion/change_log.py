"""Load landing-zone batches into the change log, exactly once, quarantining bad lines.

One ingestion takes the pending batches, oldest first, in transactions of at most
``batches_per_transaction`` batches each (a first load of millions of contacts is many
transactions of bounded size, not one). Each transaction:

1. stage every line of every batch as raw text (a blank line is quarantined, so counted);
2. parse and validate each line once (envelope, timestamps, property types), and parse
   strictly again in Python only the few lines DuckDB's lenient JSON parser may have misread;
3. classify it: ``loaded`` (new event), ``duplicate`` (event id, or identical malformed line,
   seen before) or ``quarantined`` (malformed, with its reason);
4. append to ``change_log`` / ``quarantine`` and record per-batch counts in
   ``landing_batches``, all in the same transaction.

Only after the commit are the batch files moved to the archive, so a crash at any point
leaves each transaction's batches either not written (they are taken again) or written
(taking them again finds only duplicates).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import polars as pl

from revorch.landing import LandingZone, batch_id_of
from revorch.state.backend import claim, retry_conflicts
from revorch.state.migrate import rollback

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

    def __add__(self, later: IngestResult) -> IngestResult:
        """Two transactions' results as one: counts summed, the later load id."""
        reasons = dict(self.quarantine_reasons)
        for reason, count in later.quarantine_reasons.items():
            reasons[reason] = reasons.get(reason, 0) + count
        return IngestResult(
            later.load_id or self.load_id,
            self.batches + later.batches,
            self.received + later.received,
            self.loaded + later.loaded,
            self.duplicates + later.duplicates,
            self.quarantined + later.quarantined,
            reasons,
            [*self.archived, *later.archived],
        )

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
    batches_per_transaction: int | None = None,
) -> IngestResult:
    """Ingest at most ``max_batches`` of the batches waiting in the landing zone (oldest
    first), ``batches_per_transaction`` at a time (None: all of them in one transaction).

    Several ingestions may run at once on DuckLake: their transactions claim the change log
    (revorch/state/backend.py), so the later one conflicts at commit and is run again, and
    then finds the other's events as duplicates."""
    total = IngestResult(None, 0, 0, 0, 0, 0)
    while max_batches is None or total.batches < max_batches:
        left = None if max_batches is None else max_batches - total.batches
        take = min((n for n in (left, batches_per_transaction) if n is not None), default=None)
        result = _ingest_transaction(
            conn, zone, run_id=run_id, max_event_bytes=max_event_bytes, max_batches=take
        )
        total += result
        if not result.batches or batches_per_transaction is None:
            break
    return total


def _ingest_transaction(
    conn: duckdb.DuckDBPyConnection, zone: LandingZone, **options
) -> IngestResult:
    """One transaction of ``_ingest_once`` (its keyword ``options``), run again on a conflict
    or when the batches it listed moved."""
    for _ in range(10):
        try:
            return retry_conflicts(lambda: _ingest_once(conn, zone, **options))
        except FileNotFoundError:
            continue  # a concurrent ingestion archived a batch this one listed: list again
    raise RuntimeError("the landing zone kept changing under this ingestion; try again")


def _ingest_once(
    conn: duckdb.DuckDBPyConnection,
    zone: LandingZone,
    *,
    run_id: str | None,
    max_event_bytes: int,
    max_batches: int | None,
) -> IngestResult:
    files = zone.pending()[:max_batches]
    if not files:
        return IngestResult(None, 0, 0, 0, 0, 0)

    sizes = [f.stat().st_size for f in files]
    try:
        # Parsing builds a temporary table outside the transaction: a file DuckDB cannot
        # read aborts only that statement, and the files are then read one by one.
        _parse(conn, files, max_event_bytes)
        conn.execute("BEGIN TRANSACTION")
        try:
            claim(conn, "change_log")
            load_id = conn.execute(
                "SELECT coalesce(max(load_id), 0) + 1 FROM landing_batches"
            ).fetchone()[0]
            conn.execute(FIND_DUPLICATES_SQL)
            conn.execute(APPEND_CHANGES_SQL, [load_id])
            conn.execute(APPEND_QUARANTINE_SQL, [load_id])
            conn.execute(
                RECORD_BATCHES_SQL,
                {
                    "batch_ids": [batch_id_of(f) for f in files],
                    "file_bytes": sizes,
                    "load_id": load_id,
                    "run_id": run_id,
                },
            )
            received, loaded, duplicates, quarantined = conn.execute(
                "SELECT sum(received), sum(loaded), sum(duplicates), sum(quarantined) "
                "FROM landing_batches WHERE load_id = ?",
                [load_id],
            ).fetchone()
            reasons = dict(
                conn.execute(
                    "SELECT reason, count(*) FROM quarantine WHERE load_id = ? "
                    "GROUP BY reason ORDER BY reason",
                    [load_id],
                ).fetchall()
            )
            conn.execute("COMMIT")
        except BaseException:
            rollback(conn)
            raise
    finally:
        for temp in ("raw_lines", "parsed", "duplicates"):
            conn.execute(f"DROP TABLE IF EXISTS {temp}")

    archived = [a for a in (_archive(zone, f) for f in files) if a is not None]
    return IngestResult(
        load_id, len(files), received, loaded, duplicates, quarantined, reasons, archived
    )


def _archive(zone: LandingZone, batch: Path) -> Path | None:
    """Archive a committed batch; None if a concurrent ingestion (DuckLake) that committed
    it too, before this one, has already moved it."""
    try:
        return zone.archive(batch)
    except FileNotFoundError:
        return None


def _parse(conn: duckdb.DuckDBPyConnection, files: list[Path], max_event_bytes: int) -> None:
    """Parse every line of the files into the temporary table ``parsed``."""
    columns = property_columns(conn)
    try:
        conn.execute(
            _parse_sql(columns, READ_LINES_SQL),
            {
                "paths": [str(f) for f in files],
                "delimiter": _NO_DELIMITER,
                "max_event_bytes": max_event_bytes,
            },
        )
    except duckdb.Error:
        _parse_file_by_file(conn, files, columns, max_event_bytes)
    _check_suspects(conn)


def _parse_file_by_file(
    conn: duckdb.DuckDBPyConnection,
    files: list[Path],
    columns: dict[str, dict[str, str]],
    max_event_bytes: int,
) -> None:
    conn.execute(
        "CREATE OR REPLACE TEMP TABLE raw_lines "
        "(batch_id VARCHAR, raw VARCHAR, early_reason VARCHAR)"
    )
    for f in files:
        try:
            conn.execute(
                f"INSERT INTO raw_lines {READ_LINES_SQL}",
                {"paths": [str(f)], "delimiter": _NO_DELIMITER},
            )
        except duckdb.Error:
            _read_line_by_line(conn, f)
    conn.execute(
        _parse_sql(columns, "SELECT * FROM raw_lines"), {"max_event_bytes": max_event_bytes}
    )


# Each line of a batch as one text column. Lines longer than max_line_size, or files that are
# not UTF-8, make DuckDB's reader fail; such files are then read line by line in Python.
READ_LINES_SQL = """
SELECT parse_filename(filename, true) AS batch_id,
       coalesce(raw, '') AS raw,
       NULL::VARCHAR AS early_reason
FROM read_csv($paths, columns = {'raw': 'VARCHAR'}, header = false, delim = $delimiter,
              quote = '', escape = '', filename = true, max_line_size = 16777216,
              auto_detect = false, skip = 0)
"""


def _read_line_by_line(conn: duckdb.DuckDBPyConnection, path: Path) -> None:
    rows: dict[str, list] = {"batch_id": [], "raw": [], "early_reason": []}
    lines = path.read_bytes().split(b"\n")
    if lines[-1] == b"":
        lines.pop()  # the newline that ends the last line
    for line in lines:
        line = line.rstrip(b"\r")
        try:
            text, reason = line.decode("utf-8"), None
        except UnicodeDecodeError:
            text, reason = line.decode("utf-8", errors="backslashreplace"), "invalid_utf8"
        rows["batch_id"].append(batch_id_of(path))
        rows["raw"].append(text)
        rows["early_reason"].append(reason)
    schema = {
        "batch_id": pl.String,
        "raw": pl.String,
        "early_reason": pl.String,
    }
    conn.register("lines_read_by_python", pl.DataFrame(rows, schema=schema))
    conn.execute("INSERT INTO raw_lines SELECT * FROM lines_read_by_python")
    conn.unregister("lines_read_by_python")


class _Refused(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        self.reason, self.detail = reason, detail


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    keys = [key for key, _ in pairs]
    for key in keys:
        if keys.count(key) > 1:
            raise _Refused("duplicate_key", f"key {key!r} appears {keys.count(key)} times")
    return dict(pairs)


def _non_finite(name: str) -> float:
    raise _Refused("non_finite_number", f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _Refused("non_finite_number", f"{text} is too large for a number")
    return value


def strict_json_problem(line: str) -> tuple[str, str] | None:
    """Why a line DuckDB's lenient parser read is still not strict JSON (None when it is).

    DuckDB accepts trailing commas, NaN and Infinity, and takes the first of duplicate keys;
    the landing format (RFC 8259 JSON, one closed set of event fields) does not.
    """
    try:
        event = json.loads(
            line, object_pairs_hook=_unique_keys, parse_constant=_non_finite, parse_float=_finite
        )
    except _Refused as refused:
        return refused.reason, refused.detail
    except json.JSONDecodeError as error:
        return "invalid_json", f"{error.msg} at column {error.colno}"
    except RecursionError:
        return "invalid_json", "nested too deeply"
    unknown = sorted(set(event) - set(ENVELOPE_FIELDS)) if isinstance(event, dict) else []
    if unknown:
        return "unknown_field", "fields: " + ",".join(unknown)
    return None


def _check_suspects(conn: duckdb.DuckDBPyConnection) -> None:
    """Parse strictly, in Python, only the lines the SQL flagged as possibly lenient JSON."""
    suspects = conn.execute(
        "SELECT rowid, raw FROM parsed WHERE suspect AND reason IS DISTINCT FROM 'invalid_utf8'"
    ).fetchall()
    refused = [(row, *problem) for row, raw in suspects if (problem := strict_json_problem(raw))]
    if not refused:
        return
    frame = pl.DataFrame(refused, schema=["row", "reason", "detail"], orient="row")
    conn.register("strict_refusals", frame)
    conn.execute(
        """
        UPDATE parsed SET reason = s.reason, detail = s.detail, identity = md5(parsed.raw)
        FROM strict_refusals AS s WHERE parsed.rowid = s.row
        """
    )
    conn.unregister("strict_refusals")


# JSON number grammar, and an ISO 8601 timestamp that carries its time zone.
_NUMBER = r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?"
_TIMESTAMP_TZ = (
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?"
    r"([Zz]|[-+][0-9]{2}(:?[0-9]{2})?)"
)
_TIMESTAMP_NO_TZ = r"[0-9]{4}-[0-9]{2}-[0-9]{2}([Tt ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?)?"
_DATE = r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
# Text that DuckDB's lenient parser takes but strict JSON refuses (NaN, Infinity, a trailing
# comma), that may overflow a double, or that holds a third object: such lines are parsed
# again, strictly, in Python.
_SUSPECT_TEXT = r"[:,\[]\s*[-+]?(?i:nan|inf)|,\s*[}\]]|[0-9][eE]\+?[0-9]{3}|\{[^{]*\{[^{]*\{"
ENVELOPE_FIELDS = (
    "event_id",
    "object_type",
    "object_id",
    "occurred_at",
    "op",
    "source",
    "properties",
)


def _refuses(value: str, data_type: str) -> str:
    """SQL that is true when a present property value, as text, cannot be of the column type.

    CRMs such as HubSpot send every value as a string, so numbers, booleans and dates may
    come as strings; the text must still be exact ("yes" is not a boolean, " 12" not a number).
    An object or array reads as its JSON text, which no pattern below accepts.
    """
    number = f"regexp_full_match({value}, '{_NUMBER}')"
    if data_type in ("BIGINT", "INTEGER"):
        # DuckDB would round "3.5" to 4; a count with a fraction is an error, not a count.
        accepts = f"{number} AND TRY_CAST({value} AS DOUBLE) = TRY_CAST({value} AS {data_type})"
    elif data_type == "DOUBLE":
        accepts = f"{number} AND isfinite(TRY_CAST({value} AS DOUBLE))"
    elif data_type == "BOOLEAN":
        accepts = f"lower({value}) IN ('true', 'false')"
    elif data_type == "TIMESTAMP WITH TIME ZONE":
        accepts = (
            f"regexp_full_match({value}, '{_TIMESTAMP_TZ}') "
            f"AND TRY_CAST({value} AS TIMESTAMPTZ) IS NOT NULL"
        )
    elif data_type == "DATE":
        accepts = f"regexp_full_match({value}, '{_DATE}') AND TRY_CAST({value} AS DATE) IS NOT NULL"
    else:
        accepts = f"TRY_CAST({value} AS {data_type}) IS NOT NULL"
    return f"{value} IS NOT NULL AND NOT coalesce({accepts}, false)"


def _quoted(name: str) -> str:
    return '"' + name + '"'


def _property_checks(columns: dict[str, dict[str, str]]) -> tuple[str, str, str]:
    """For the known properties: the JSON structure of the typed ones, and two CASEs (by
    object type) naming the typed properties with a wrong value and the text properties
    holding an object or an array."""
    typed = sorted({c for cols in columns.values() for c, t in cols.items() if t != "VARCHAR"})
    structure = "{" + ",".join(f'"{c}":"VARCHAR"' for c in typed) + "}"
    wrong_typed, wrong_text = [], []
    for object_type, cols in columns.items():
        checks = [
            f"CASE WHEN {_refuses(f'typed.{_quoted(c)}', t)} THEN '{c}' END"
            for c, t in cols.items()
            if t != "VARCHAR"
        ]
        containers = [
            f"CASE WHEN json_type(properties, '$.{_quoted(c)}') IN ('OBJECT', 'ARRAY') "
            f"THEN '{c}' END"
            for c, t in cols.items()
            if t == "VARCHAR"
        ]
        for cases, found in ((wrong_typed, checks), (wrong_text, containers)):
            cases.append(
                f"WHEN '{object_type}' THEN nullif(concat_ws(',', NULL, {', '.join(found)}), '')"
            )
    return (
        structure,
        "CASE object_type " + "\n".join(wrong_typed) + " END",
        "CASE object_type " + "\n".join(wrong_text) + " END",
    )


def _parse_sql(columns: dict[str, dict[str, str]], lines: str) -> str:
    """Parse each line once and name the first thing wrong with it (NULL when valid).

    ``lines`` is the query yielding (batch_id, raw, early_reason), in file order.
    """
    structure, wrong_typed, wrong_text = _property_checks(columns)
    envelope_keys_present = " + ".join(
        f"list_contains(json_keys(raw), '{key}')::INT" for key in ENVELOPE_FIELDS
    )
    object_types = ", ".join(f"'{t}'" for t in sorted(columns))
    return f"""
    CREATE OR REPLACE TEMP TABLE parsed AS
    WITH lines AS (
        SELECT batch_id, raw, early_reason,
               trim(raw, ' ' || chr(9) || chr(13)) = '' AS blank,
               strlen(raw) > $max_event_bytes AS oversized,
               CASE WHEN strlen(raw) <= $max_event_bytes THEN TRY(json_transform(raw,
                   '{{"event_id":"JSON","object_type":"VARCHAR","object_id":"JSON",
                     "op":"VARCHAR","occurred_at":"VARCHAR","source":"JSON",
                     "properties":"JSON"}}')) END AS e
        FROM ({lines})
    ), fields AS (
        SELECT batch_id, raw, early_reason, blank, oversized,
               e IS NULL AS unreadable,
               starts_with(ltrim(raw, ' ' || chr(9) || chr(13)), '{{') AS is_object,
               json_type(e.event_id) AS event_id_type, e.event_id ->> '$' AS event_id,
               json_type(e.object_id) AS object_id_type, e.object_id ->> '$' AS object_id,
               e.event_id::VARCHAR AS event_id_json, e.object_id::VARCHAR AS object_id_json,
               e.object_type, coalesce(e.op, 'upsert') AS op,
               e.occurred_at AS occurred_text,
               CASE WHEN regexp_full_match(e.occurred_at, '{_TIMESTAMP_TZ}')
                    THEN TRY_CAST(e.occurred_at AS TIMESTAMPTZ) END AS occurred_at,
               json_type(e.source) AS source_type,
               coalesce(e.source ->> '$', split_part(batch_id, '-', 1)) AS source,
               json_type(e.properties) AS properties_type,
               coalesce(e.properties, '{{}}'::JSON) AS properties
        FROM lines
    ), checked AS (
        SELECT *,
               CASE WHEN properties_type = 'OBJECT' THEN concat_ws(',',
                   {wrong_typed},
                   -- only a properties text with a second '{{' or a '[' can hold a container
                   CASE WHEN strpos(properties[2:], '{{') > 0 OR strpos(properties, '[') > 0
                        THEN {wrong_text} END)
               END AS wrong_fields,
               CASE WHEN unreadable THEN false ELSE
                   -- NaN, Infinity, a trailing comma, a huge exponent, or a third object
                   -- (which may hide a duplicate key) in the text
                   regexp_matches(raw, '{_SUSPECT_TEXT}')
                   -- a key that is not in the envelope, or an envelope key given twice
                   OR len(json_keys(raw)) <> {envelope_keys_present}
                   OR len(json_keys(properties)) <> list_unique(json_keys(properties))
               END AS suspect
        FROM (SELECT *, json_transform(properties, '{structure}') AS typed FROM fields)
    ), judged AS (
        SELECT *,
               CASE
                   WHEN early_reason IS NOT NULL THEN early_reason
                   WHEN blank THEN 'blank_line'
                   WHEN oversized THEN 'oversized'
                   WHEN unreadable THEN 'invalid_json'
                   WHEN NOT is_object THEN 'not_an_object'
                   WHEN coalesce(event_id_type, 'NULL') <> 'VARCHAR'
                        OR trim(event_id) = '' OR trim(event_id) <> event_id
                        THEN 'missing_event_id'
                   WHEN coalesce(object_id_type, 'NULL') NOT IN ('VARCHAR', 'BIGINT', 'UBIGINT')
                        OR trim(object_id) = '' OR trim(object_id) <> object_id
                        THEN 'missing_object_id'
                   WHEN object_type IS NULL OR object_type NOT IN ({object_types})
                        THEN 'unknown_object_type'
                   WHEN op NOT IN ('upsert', 'delete') THEN 'invalid_op'
                   WHEN occurred_at IS NULL THEN 'invalid_occurred_at'
                   WHEN occurred_at < TIMESTAMPTZ '1990-01-01'
                        OR occurred_at > now() + INTERVAL 1 DAY THEN 'occurred_at_out_of_range'
                   WHEN op = 'upsert' AND coalesce(properties_type, 'NULL') = 'NULL'
                        THEN 'missing_properties'
                   WHEN coalesce(properties_type, 'OBJECT') <> 'OBJECT'
                        OR coalesce(source_type, 'VARCHAR') <> 'VARCHAR'
                        OR wrong_fields <> '' THEN 'wrong_type'
               END AS reason
        FROM checked
    )
    SELECT batch_id, event_id, object_type, object_id, op, occurred_at, source,
           properties, reason, suspect,
           CASE
               WHEN reason = 'oversized'
                   THEN 'line of ' || strlen(raw) || ' bytes, limit ' || $max_event_bytes
               WHEN reason = 'missing_event_id'
                   THEN 'event_id: ' || coalesce(event_id_json, 'missing')
               WHEN reason = 'missing_object_id'
                   THEN 'object_id: ' || coalesce(object_id_json, 'missing')
               WHEN reason IN ('invalid_occurred_at', 'occurred_at_out_of_range')
                   THEN 'occurred_at: ' || coalesce(occurred_text, 'missing')
                        || CASE WHEN regexp_full_match(occurred_text, '{_TIMESTAMP_NO_TZ}')
                                THEN ' (needs a time zone, e.g. Z)' ELSE '' END
               WHEN reason = 'missing_properties' THEN 'an upsert needs a properties object'
               WHEN reason = 'wrong_type' AND coalesce(properties_type, 'OBJECT') <> 'OBJECT'
                   THEN 'properties is ' || properties_type
               WHEN reason = 'wrong_type' AND coalesce(source_type, 'VARCHAR') <> 'VARCHAR'
                   THEN 'source is ' || source_type
               WHEN reason = 'wrong_type' THEN 'fields: ' || wrong_fields
           END AS detail,
           CASE WHEN reason IS NOT NULL OR suspect THEN raw END AS raw,
           CASE WHEN reason IS NULL THEN event_id ELSE md5(raw) END AS identity
    FROM judged
    """


# A valid event is loaded the first time its id is seen; a malformed line is quarantined the
# first time its exact text is seen. Every later sighting is a duplicate. Repeats are rare,
# so the window runs only over identities that occur more than once in this load.
FIND_DUPLICATES_SQL = """
CREATE OR REPLACE TEMP TABLE duplicates AS
WITH repeated AS (
    SELECT reason IS NULL AS valid, identity FROM parsed GROUP BY ALL HAVING count(*) > 1
)
SELECT rowid AS row FROM parsed
WHERE (reason IS NULL, identity) IN (SELECT (valid, identity) FROM repeated)
QUALIFY row_number() OVER (PARTITION BY reason IS NULL, identity ORDER BY batch_id, rowid) > 1
UNION
SELECT rowid FROM parsed
WHERE reason IS NULL AND identity IN (SELECT event_id FROM change_log)
UNION
SELECT rowid FROM parsed
WHERE reason IS NOT NULL AND identity IN (SELECT raw_md5 FROM quarantine)
"""

APPEND_CHANGES_SQL = """
INSERT INTO change_log
SELECT event_id, $1, batch_id, source, object_type, object_id, op, occurred_at, now(), properties
FROM parsed
WHERE reason IS NULL AND rowid NOT IN (SELECT row FROM duplicates)
"""

APPEND_QUARANTINE_SQL = """
INSERT INTO quarantine
SELECT identity, $1, batch_id, event_id, reason, detail, raw, now()
FROM parsed
WHERE reason IS NOT NULL AND rowid NOT IN (SELECT row FROM duplicates)
"""

RECORD_BATCHES_SQL = """
INSERT INTO landing_batches
WITH outcomes AS (
    SELECT batch_id,
           CASE WHEN rowid IN (SELECT row FROM duplicates) THEN 'duplicate'
                WHEN reason IS NULL THEN 'loaded'
                ELSE 'quarantined' END AS outcome
    FROM parsed
)
SELECT f.batch_id, f.file_bytes, $load_id,
       count(o.batch_id),
       count(*) FILTER (WHERE o.outcome = 'loaded'),
       count(*) FILTER (WHERE o.outcome = 'duplicate'),
       count(*) FILTER (WHERE o.outcome = 'quarantined'),
       now(), $run_id
FROM (SELECT unnest($batch_ids) AS batch_id, unnest($file_bytes) AS file_bytes) AS f
LEFT JOIN outcomes AS o USING (batch_id)
GROUP BY f.batch_id, f.file_bytes
"""
