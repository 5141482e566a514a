"""Build the current-state tables (contacts, deals, ...) from the change log.

For each record and each field, the value set by the newest change wins, by the change's own
``occurred_at`` (ties broken by a hash of the event id), never by arrival order. A refresh
rebuilds only the records touched since the last refresh (the ``crm_current_state``
watermark); a full rebuild replays the whole change log and gives the same tables.
"""

from __future__ import annotations

import duckdb

from revorch.ingestion.change_log import property_columns

WATERMARK = "crm_current_state"

# The newest change of each field wins; "ord" orders changes by time, then by event id hash.
RECORD_SQL = """
WITH changes AS (
    SELECT object_id, op, occurred_at,
           (epoch_us(occurred_at)::HUGEINT << 64) + hash(event_id) AS ord,
           json_keys(properties) AS keys,
           json_transform(properties, '{struct}') AS p
    FROM {source}
    WHERE object_type = '{object_type}'
)
SELECT object_id AS id,
       {fields},
       min(occurred_at) AS _first_seen_at,
       max(occurred_at) AS _last_changed_at,
       count(*) AS _changes,
       arg_max(op = 'delete', ord) AS _deleted
FROM changes
GROUP BY object_id
"""

FIELD_SQL = (
    "TRY_CAST(arg_max_null(p.{column}, ord) FILTER (WHERE list_contains(keys, '{column}'))"
    " AS {data_type}) AS {column}"
)


def refresh_current_state(
    conn: duckdb.DuckDBPyConnection, *, full_rebuild: bool = False
) -> dict[str, int]:
    """Bring every current-state table up to the change log; return records rebuilt per table."""
    conn.execute("BEGIN TRANSACTION")
    try:
        since = 0 if full_rebuild else _watermark(conn)
        upto = conn.execute("SELECT coalesce(max(load_id), 0) FROM change_log").fetchone()[0]
        conn.execute(
            "CREATE OR REPLACE TEMP TABLE touched AS "
            "SELECT DISTINCT object_type, object_id FROM change_log WHERE load_id > ?",
            [since],
        )
        if since:
            # One pass over the change log for every touched record, whatever its type; each
            # table below reads this slice instead of scanning the whole log again.
            conn.execute(
                "CREATE OR REPLACE TEMP TABLE touched_changes AS SELECT c.* FROM change_log AS c "
                "SEMI JOIN touched AS t USING (object_type, object_id)"
            )
        tables = dict(conn.execute("SELECT object_type, table_name FROM object_types").fetchall())
        rebuilt = {}
        for object_type, columns in property_columns(conn).items():
            table = tables[object_type]
            if since == 0:
                conn.execute(f"DELETE FROM {table}")
            else:
                conn.execute(
                    f"DELETE FROM {table} WHERE id IN "
                    "(SELECT object_id FROM touched WHERE object_type = ?)",
                    [object_type],
                )
            sql = RECORD_SQL.format(
                object_type=object_type,
                source="touched_changes" if since else "change_log",
                struct="{" + ",".join(f'"{c}":"VARCHAR"' for c in columns) + "}",
                fields=",\n       ".join(
                    FIELD_SQL.format(column=c, data_type=t) for c, t in columns.items()
                ),
            )
            rebuilt[table] = conn.execute(f"INSERT INTO {table} BY NAME {sql}").fetchone()[0]
        # Delete and insert rather than INSERT OR REPLACE: DuckLake has no primary keys.
        conn.execute("DELETE FROM state_watermarks WHERE name = ?", [WATERMARK])
        conn.execute(
            "INSERT INTO state_watermarks (name, load_id, updated_at) VALUES (?, ?, now())",
            [WATERMARK, upto],
        )
        conn.execute("DROP TABLE touched")
        conn.execute("DROP TABLE IF EXISTS touched_changes")
        conn.execute("COMMIT")
    except Exception:
        conn.execute("ROLLBACK")
        raise
    return rebuilt


def _watermark(conn: duckdb.DuckDBPyConnection) -> int:
    row = conn.execute(
        "SELECT load_id FROM state_watermarks WHERE name = ?", [WATERMARK]
    ).fetchone()
    return row[0] if row else 0
