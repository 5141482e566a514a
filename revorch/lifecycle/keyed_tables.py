"""Stage tables kept up to date by key: each run recomputes the rows of the keys touched since
its watermark, not the whole table.

A keyed table is a query of rows for the keys in the temp table ``scope(key)`` (its
``rows_sql``) and a query of the keys whose rows may differ since the last run (its
``touched_sql``, which reads the one-row temp table ``span``: ``since`` and ``upto``, the
change-log loads after the watermark, and ``previous_as_of`` and ``as_of``, the span the clock
moved over, swapped when it went back). A refresh deletes the rows of
the touched keys and inserts their rows again, with the watermark, in the caller's
transaction. It recomputes every key (``all_keys_sql``) on the first run, when its SQL changed
(a hash of it is kept), and on a full rebuild; either way gives the same table
(tests/test_keyed_stages.py).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import duckdb

from revorch import clock
from revorch.lifecycle.runner import (
    REFRESHES_SQL,
    record_recomputed,
    save_watermark,
    since_last_clock,
    table_exists,
)

# The rows a stage reads are in the current-state tables: keys are touched up to the loads
# those hold, never past them (a load not folded into them yet is seen on a later run).
CURRENT_STATE = "crm_current_state"

VERSIONS_SQL = (
    "CREATE TABLE IF NOT EXISTS stages.sql_versions "
    "(name VARCHAR NOT NULL, sql_hash VARCHAR NOT NULL, updated_at TIMESTAMPTZ)"
)


@dataclass(frozen=True)
class KeyedRefresh:
    keys: int  # keys recomputed
    why: str  # full_rebuild, first_run, sql_changed, changed


def sql_hash(*sql: str) -> str:
    return hashlib.sha256("\x00".join(sql).encode()).hexdigest()[:16]


def stored_hash(conn: duckdb.DuckDBPyConnection, name: str) -> str | None:
    conn.execute(VERSIONS_SQL)
    row = conn.execute("SELECT sql_hash FROM stages.sql_versions WHERE name = ?", [name]).fetchone()
    return row[0] if row else None


def store_hash(conn: duckdb.DuckDBPyConnection, name: str, value: str) -> None:
    conn.execute(VERSIONS_SQL)
    # Delete and insert rather than INSERT OR REPLACE: DuckLake has no primary keys.
    conn.execute("DELETE FROM stages.sql_versions WHERE name = ?", [name])
    conn.execute("INSERT INTO stages.sql_versions VALUES (?, ?, now())", [name, value])


def refresh_keyed_table(
    conn: duckdb.DuckDBPyConnection,
    *,
    table: str,
    key: str,
    rows_sql: str,
    touched_sql: str,
    all_keys_sql: str,
    full_rebuild: bool = False,
    inputs: tuple[str, ...] = (CURRENT_STATE,),
) -> KeyedRefresh:
    """Bring ``table`` up to the current state by recomputing the touched keys (see the module
    docstring). Runs inside the caller's transaction. ``inputs`` name the derived tables (by
    their watermark) its rows read: loads are seen up to the slowest of them."""
    name = table
    conn.execute(REFRESHES_SQL)  # the touched keys of a table may be the keys another recomputed
    version = sql_hash(rows_sql, touched_sql, all_keys_sql)
    row = conn.execute(
        "SELECT load_id, as_of FROM state_watermarks WHERE name = ?", [name]
    ).fetchone()
    exists = table_exists(conn, table)
    seen = dict(
        conn.execute(
            "SELECT name, load_id FROM state_watermarks WHERE list_contains(?, name)",
            [list(inputs)],
        ).fetchall()
    )
    upto = min(seen.get(watermark, 0) for watermark in inputs)
    as_of = clock.now(conn)
    if full_rebuild:
        why = "full_rebuild"
    elif row is None or not exists:
        why = "first_run"
    elif stored_hash(conn, name) != version:
        why = "sql_changed"
    else:
        why = "changed"

    if why == "changed":
        since, previous_as_of = row
        span = since_last_clock(previous_as_of, as_of)
        conn.execute(
            "CREATE OR REPLACE TEMP TABLE span AS SELECT CAST($since AS BIGINT) AS since, "
            "CAST($upto AS BIGINT) AS upto, "
            "CAST($previous_as_of AS TIMESTAMPTZ) AS previous_as_of, "
            "CAST($as_of AS TIMESTAMPTZ) AS as_of",
            {"since": since, "upto": upto, **span},
        )
        conn.execute(
            f"CREATE OR REPLACE TEMP TABLE scope AS SELECT DISTINCT key FROM ({touched_sql}) "
            "AS t(key) WHERE key IS NOT NULL"
        )
        conn.execute("DROP TABLE span")
        conn.execute(f"DELETE FROM {table} WHERE {key} IN (SELECT key FROM scope)")
        conn.execute(f"INSERT INTO {table} BY NAME {rows_sql}")
    else:
        conn.execute(
            f"CREATE OR REPLACE TEMP TABLE scope AS SELECT DISTINCT key FROM ({all_keys_sql}) "
            "AS t(key) WHERE key IS NOT NULL"
        )
        conn.execute(f"CREATE OR REPLACE TABLE {table} AS {rows_sql}")
    keys = conn.execute("SELECT count(*) FROM scope").fetchone()[0]
    record_recomputed(conn, table, "key", upto, as_of)
    conn.execute("DROP TABLE scope")
    save_watermark(conn, name, upto, as_of)
    store_hash(conn, name, version)
    return KeyedRefresh(keys, why)
